"""moto's SQS/SNS server for the local tests, with one fix to its FIFO receive.

moto (5.2.5) selects the messages a ReceiveMessage returns without holding a lock: between
its "is this message visible?" check and marking the message received, a concurrent
receive on another thread can pass the same check, so two consumers of one FIFO queue may
both get one message. SQS never does that (a received message is invisible to others until
its visibility timeout ends), and the transport conformance suite checks it. Here each
receive, delete and visibility change on a queue runs under the queue's own condition
lock, which a long poll releases while it waits (`Condition.wait` releases the lock), so
long polls still wait concurrently.

Started by scripts/services.sh with the same arguments as `moto_server`.
"""

import functools
import sys

from moto.server import main
from moto.sqs import models


def _under_queue_lock(method):
    @functools.wraps(method)
    def locked(self, queue_name, *args, **kwargs):
        queue = self.get_queue(queue_name)
        with queue._messages_lock:
            return method(self, queue_name, *args, **kwargs)

    return locked


for _name in ("receive_message", "delete_message", "change_message_visibility"):
    setattr(models.SQSBackend, _name, _under_queue_lock(getattr(models.SQSBackend, _name)))

if __name__ == "__main__":
    sys.exit(main())
