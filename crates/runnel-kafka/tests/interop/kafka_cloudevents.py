"""Plain Kafka client side of runnel-kafka's interoperability test.

Knows nothing of Runnel: confluent-kafka plus the official CloudEvents SDK (Kafka
protocol binding, binary content mode).

  read  BROKERS TOPIC GROUP COUNT  read COUNT records from the beginning of TOPIC, parse
                                   each as a CloudEvent, print one JSON line per event
  write BROKERS TOPIC ID KEY       publish one CloudEvent (JSON data) with the given id
                                   and partition key, print "sent"

  write-shape BROKERS TOPIC SHAPE  publish one message of SHAPE (scripts/interop/shapes.py:
                                   structured, json-event, outbox-record) keyed as a plain
                                   producer does, print "sent"
  read-plain BROKERS TOPIC GROUP   read one record as a plain consumer does (headers, the
                                   value parsed as JSON), print it as one JSON line

Every wait is bounded; a failure exits non-zero with the reason on stderr.
"""

import json
import os
import sys
import time

from cloudevents.core.bindings.kafka import KafkaMessage, from_binary, to_binary
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import Consumer, KafkaError, Producer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../../scripts/interop"))
import shapes  # noqa: E402

DEADLINE_SECONDS = 30


def read(brokers, topic, group, count):
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + DEADLINE_SECONDS
    seen = 0
    try:
        while seen < count:
            if time.monotonic() > deadline:
                sys.exit(f"timed out: read {seen} of {count} events")
            record = consumer.poll(0.5)
            if record is None:
                continue
            if record.error():
                if record.error().code() == KafkaError._PARTITION_EOF:
                    continue
                sys.exit(f"consume error: {record.error()}")
            headers = {k: (v or b"") for k, v in (record.headers() or [])}
            event = from_binary(
                KafkaMessage(headers=headers, key=record.key(), value=record.value() or b""),
                JSONFormat(),
            )
            time_attr = event.get_time()
            print(
                json.dumps(
                    {
                        "id": event.get_id(),
                        "type": event.get_type(),
                        "source": event.get_source(),
                        "specversion": event.get_specversion(),
                        "subject": event.get_subject(),
                        "datacontenttype": event.get_datacontenttype(),
                        "time": time_attr.isoformat() if time_attr else None,
                        "partitionkey": event.get_extension("partitionkey"),
                        "correlationid": event.get_extension("correlationid"),
                        "data": event.get_data(),
                        "record_key": record.key().decode() if record.key() else None,
                    }
                ),
                flush=True,
            )
            seen += 1
    finally:
        consumer.close()


def write(brokers, topic, event_id, key):
    event = CloudEvent(
        attributes={
            "id": event_id,
            "type": "com.example.PlainClientSaidHello",
            "source": "urn:example:python",
            "subject": "greeting-1",
            "datacontenttype": "application/json",
            "partitionkey": key,
            "correlationid": "corr-py",
        },
        data={"hello": "from python", "n": 7},
    )
    message = to_binary(event, JSONFormat())
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all"})
    errors = []
    producer.produce(
        topic,
        key=message.key,
        value=message.value,
        headers=list(message.headers.items()),
        on_delivery=lambda err, _msg: errors.append(err) if err else None,
    )
    if producer.flush(DEADLINE_SECONDS) != 0:
        sys.exit("timed out flushing the producer")
    if errors:
        sys.exit(f"delivery failed: {errors[0]}")
    print("sent", flush=True)


def write_shape(brokers, topic, shape):
    headers, body, key = shapes.build(shape)
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all"})
    errors = []
    producer.produce(
        topic,
        key=key,
        value=body,
        headers=list(headers.items()),
        on_delivery=lambda err, _msg: errors.append(err) if err else None,
    )
    if producer.flush(DEADLINE_SECONDS) != 0:
        sys.exit("timed out flushing the producer")
    if errors:
        sys.exit(f"delivery failed: {errors[0]}")
    print("sent", flush=True)


def read_plain(brokers, topic, group):
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while time.monotonic() < deadline:
            record = consumer.poll(0.5)
            if record is None:
                continue
            if record.error():
                if record.error().code() == KafkaError._PARTITION_EOF:
                    continue
                sys.exit(f"consume error: {record.error()}")
            headers = {k: (v or b"") for k, v in (record.headers() or [])}
            print(shapes.plain_line(headers, record.value() or b"null"), flush=True)
            return
        sys.exit("timed out: no record")
    finally:
        consumer.close()


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "read" and len(sys.argv) == 6:
        read(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif mode == "write" and len(sys.argv) == 6:
        write(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif mode == "write-shape" and len(sys.argv) == 5:
        write_shape(sys.argv[2], sys.argv[3], sys.argv[4])
    elif mode == "read-plain" and len(sys.argv) == 5:
        read_plain(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
