"""Sample-level DP-SGD with Opacus inside each silo (see the app module)."""
