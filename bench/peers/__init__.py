# bench/peers: the runtimes bench/runtime.py compares spawngrid with, one module per peer
# (bubblewrap, crun, systemd-nspawn, LXC, podman): how each starts a container on the bench's
# root filesystem, attaches to a running one and captures a session's changes; `base` has
# what they share (the Variant protocol, an overlay made by the bench, the peers' private
# mount namespace, the limits every tool gets).
