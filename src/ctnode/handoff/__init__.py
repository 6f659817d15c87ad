"""Hand-off: ``ctnode push`` submitted through the running local node, without the start-up
cost of the whole stack in the command.

The command (``handoff.client``, imported before anything heavy) reads its command line and
finds the node's stream socket ``<data_dir>/run/submit.sock`` (``handoff.wire``). The node
(``handoff.server``) accepts only a process of its own user, group and mount namespace, loads the
settings exactly as that command would (its ``--config``, its ``CTNODE_*`` variables, its working
directory) and, when they name this node's database, submits the job with the same code as the
command would (``submit.submit_push``, the job row committed before the reply), then follows it
and sends what the command prints. In every other case the command is told to fall back, or
finds no node, and runs the ordinary path: the output, exit codes and the job row are the same
either way.

Nothing here is imported by ``ctnode.handoff`` itself: the client must stay light.
"""
