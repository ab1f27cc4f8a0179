"""A plain AMQP client (pika) that knows nothing of Runnel, with the official CloudEvents
SDK's AMQP binding.

  consume URL EXCHANGE   bind a private queue to EXCHANGE, print READY, read one message,
                         parse it with the SDK and print its attributes as one JSON line
  publish URL EXCHANGE   publish one CloudEvent built with the SDK (binary mode)
  publish-shape URL EXCHANGE SHAPE
                         publish one message of SHAPE (scripts/interop/shapes.py:
                         structured, json-event, outbox-record) as a plain client does
  read-plain URL EXCHANGE
                         bind a private queue, print READY, read one message as a plain
                         client does (headers, the body parsed as JSON), print it

Exits non-zero on any failure; every wait has a deadline.
"""

import json
import os
import sys
import time

import pika
from cloudevents.core.bindings import amqp
from cloudevents.core.v1.event import CloudEvent

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../../scripts/interop"))
import shapes  # noqa: E402

DEADLINE_S = 20


def consume(url, exchange):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(queue=queue, exchange=exchange, routing_key="#")
    print("READY", flush=True)
    until = time.monotonic() + DEADLINE_S
    while time.monotonic() < until:
        method, props, body = channel.basic_get(queue=queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        message = amqp.AMQPMessage(
            properties={"content-type": props.content_type},
            application_properties=dict(props.headers or {}),
            application_data=body,
        )
        event = amqp.from_binary_event(message)
        attrs = event.get_attributes()
        out = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in attrs.items()}
        out["data"] = event.get_data()
        out["delivery_mode"] = props.delivery_mode
        print(json.dumps(out), flush=True)
        connection.close()
        return 0
    print("no message within the deadline", file=sys.stderr)
    return 2


def publish(url, exchange):
    event = CloudEvent(
        attributes={
            "id": "interop-from-python-1",
            "type": "com.example.PythonSaidHello",
            "source": "/interop/pika",
            "subject": "Greeting-1",
            "partitionkey": "Greeting-1",
            "correlationid": "corr-py",
        },
        data={"hello": "from python", "n": 7},
    )
    message = amqp.to_binary_event(event)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(
        exchange=exchange,
        routing_key="com.example.PythonSaidHello",
        body=message.application_data,
        properties=pika.BasicProperties(
            content_type=message.properties.get("content-type"),
            headers=message.application_properties,
            delivery_mode=2,
        ),
    )
    connection.close()
    print("PUBLISHED", flush=True)
    return 0


def publish_shape(url, exchange, shape):
    headers, body, _key = shapes.build(shape)
    content_type = headers.pop("content-type", "application/json")
    routing_key = headers.get("event-type", "plain")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(
        exchange=exchange,
        routing_key=routing_key,
        body=body,
        properties=pika.BasicProperties(
            content_type=content_type,
            headers=headers or None,
            delivery_mode=2,
            timestamp=int(time.time()),
        ),
    )
    connection.close()
    print("PUBLISHED", flush=True)
    return 0


def read_plain(url, exchange):
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(queue=queue, exchange=exchange, routing_key="#")
    print("READY", flush=True)
    until = time.monotonic() + DEADLINE_S
    while time.monotonic() < until:
        method, props, body = channel.basic_get(queue=queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        print(shapes.plain_line(dict(props.headers or {}), body), flush=True)
        connection.close()
        return 0
    print("no message within the deadline", file=sys.stderr)
    return 2


if __name__ == "__main__":
    mode, url, exchange = sys.argv[1:4]
    if mode == "publish-shape":
        sys.exit(publish_shape(url, exchange, sys.argv[4]))
    sys.exit({"consume": consume, "publish": publish, "read-plain": read_plain}[mode](url, exchange))
