"""Running code a user uploaded in a confined child process.

A coordinator's server app and a node's client app are code that someone
else wrote. Neither may share a process with a private key (the server's TLS
key, a node's key, the state database's credentials). :mod:`.spawn` starts
such code in a child process with a minimal environment, resource limits and
(on Linux) a Landlock ruleset that lets it read only the Python installation
and its own app, and write only its own work directory; the child talks to
its parent over one inherited socket (:mod:`.channel`), and the parent checks
everything it receives as strictly as it checks a node's messages.
"""
