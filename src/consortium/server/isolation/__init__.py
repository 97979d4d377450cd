"""A run's server app in its own sandboxed process (deployment).

The coordinator's app is code the server's operator did not write. It runs
in a child process per run (:mod:`.app_process`) confined by
:mod:`consortium.sandbox`: no access to the server's key, the CA directory or
the state database, no network, a fresh import of the app's modules. It
reaches the nodes through a Grid whose calls the server carries out for it
(:mod:`.host`), and reports rounds and checkpoints the same way; the server
checks every message, record and path it receives from the child as strictly
as a node's (:mod:`.wire`).
"""
