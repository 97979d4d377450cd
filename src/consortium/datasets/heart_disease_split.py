"""FLamby's Fed-Heart-Disease split for the default seed, kept as each center's test rows.

:mod:`consortium.datasets.heart_disease` splits each center as FLamby does, with
scikit-learn's ``train_test_split`` (66/34, stratified on the label, seed 43). Importing
scikit-learn costs each node's app process ~2 s, and seed 43 is the split every run of
the example uses, so its outcome is kept here: each center's test rows, as positions
among its complete rows in file order (the train rows are the others). Any other seed
is drawn with scikit-learn. ``tests/datasets/test_heart_disease.py`` draws seed 43 again
with scikit-learn and compares it with these rows.
"""

#: the ``split_seed`` whose split is kept here
SEED = 43

#: each center's test rows, space-separated
TEST_ROWS: dict[str, str] = {
    "cleveland": (
        "5 13 16 24 26 34 40 42 43 46 47 48 49 53 55 56 59 60 61 63 64 65 69 72 76 78 86 "
        "87 88 90 91 93 95 101 103 104 105 113 116 123 128 133 134 135 136 137 151 152 "
        "154 156 157 160 163 165 170 171 179 180 188 190 192 197 201 202 203 211 213 215 "
        "216 218 221 223 224 227 228 233 236 239 243 246 249 250 256 257 258 259 260 264 "
        "265 266 270 283 284 285 288 289 290 292 294 295 296 297 298 301"
    ),
    "hungarian": (
        "3 7 16 21 25 26 27 28 29 32 34 35 36 41 47 48 49 51 53 58 60 61 64 68 73 74 75 "
        "84 85 87 89 91 95 104 107 110 111 112 117 118 120 123 127 128 131 132 136 137 "
        "139 143 145 149 155 158 159 161 164 169 172 179 182 186 188 189 190 191 193 194 "
        "196 199 202 203 204 206 213 219 223 224 234 236 239 243 248 250 251 252 254 258 "
        "259"
    ),
    "switzerland": ("5 6 7 8 13 14 18 19 20 22 24 28 29 32 40 41"),
    "va": (
        "1 5 6 9 12 26 29 33 35 36 38 39 41 42 45 47 54 60 61 62 64 66 67 68 73 75 76 78 "
        "79 85 88 92 97 98 110 111 112 114 117 118 119 121 125 127 128"
    ),
}
