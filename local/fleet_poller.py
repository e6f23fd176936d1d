"""The local stand-in for Lambda's SQS event source mapping: at most `concurrency` batches in
flight, up to ten messages a batch, partial batch responses honoured (a message reported failed is
left on the queue and comes back after its visibility timeout; the others are deleted).

moto's SQS does not invoke functions, so the local stack, the fleet tests and the fleet benchmark
poll with this. What it does not imitate: Lambda's scaling ramp (it starts at `concurrency`),
the batching window, and a message's move to the dead-letter queue, which is the queue's own
redrive policy (moto applies it on receive).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BatchHandler = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class PollStats:
    batches: int = 0
    messages: int = 0
    failed: int = 0
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """A received message as the event source mapping hands it to the function."""
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {},
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class FleetPoller:
    def __init__(self, sqs: Any, queue_url: str, handler: BatchHandler, *, concurrency: int, batch_size: int = 10):
        if not 1 <= batch_size <= 10:
            raise ValueError("batch_size is 1 to 10, as for the event source mapping")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.sqs = sqs
        self.queue_url = queue_url
        self.handler = handler
        self.concurrency = concurrency
        self.batch_size = batch_size
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
        self.queue_arn = attributes["QueueArn"]
        self.region = self.queue_arn.split(":")[3]
        self._in_flight = 0
        # moto's ReceiveMessage checks a message's visibility and marks it received without a lock,
        # so two concurrent receives on one queue can both get it: receives are taken one at a time
        # (the handlers still run `concurrency` at once)
        self._receiving = threading.Lock()

    def drain(self) -> PollStats:
        """Poll with `concurrency` workers until the queue answers empty to every one of them."""
        stats = PollStats()
        workers = [threading.Thread(target=self._work, args=(stats,)) for _ in range(self.concurrency)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return stats

    def _work(self, stats: PollStats) -> None:
        while True:
            with self._receiving:
                got = self.sqs.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size, AttributeNames=["All"]
                ).get("Messages", [])
            if not got:
                return
            with stats.lock:
                self._in_flight += 1
                stats.peak_in_flight = max(stats.peak_in_flight, self._in_flight)
            try:
                records = [sqs_record(m, self.queue_arn, self.region) for m in got]
                try:
                    answer = self.handler({"Records": records})
                    failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
                except Exception:  # the whole invocation failed: every message comes back
                    failed = {r["messageId"] for r in records}
                done = [m for m in got if m["MessageId"] not in failed]
                if done:
                    self.sqs.delete_message_batch(
                        QueueUrl=self.queue_url,
                        Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
                    )
                with stats.lock:
                    stats.batches += 1
                    stats.messages += len(got)
                    stats.failed += len(failed)
            finally:
                with stats.lock:
                    self._in_flight -= 1
