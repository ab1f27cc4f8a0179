"""A plain NATS client (nats-py) that knows nothing of Runnel, with the official
CloudEvents SDK. NATS headers follow the HTTP header mapping of the CloudEvents binding
(`ce-` attributes, `content-type`), so the SDK's HTTP binding reads and writes them.

  consume URL STREAM SUBJECT   read the first message of STREAM on SUBJECT with an
                               ephemeral pull consumer, parse it with the SDK and print
                               its attributes (plus data and Nats-Msg-Id) as one JSON line
  publish URL SUBJECT          publish one CloudEvent built with the SDK (binary mode) with
                               a JetStream publish, and print PUBLISHED
  publish-shape URL SUBJECT SHAPE
                               publish one message of SHAPE (scripts/interop/shapes.py:
                               structured, json-event, outbox-record), print PUBLISHED
  read-plain URL STREAM SUBJECT
                               read the first message as a plain client does (headers, the
                               body parsed as JSON) and print it as one JSON line

Exits non-zero on any failure; every wait has a deadline.
"""

import asyncio
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../../scripts/interop"))
import shapes  # noqa: E402

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy
from cloudevents.core.bindings import http
from cloudevents.core.v1.event import CloudEvent

DEADLINE_S = 20


async def consume(url, stream, subject):
    nc = await nats.connect(url, connect_timeout=DEADLINE_S)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        msgs = await sub.fetch(1, timeout=DEADLINE_S)
        msg = msgs[0]
        await msg.ack()
        headers = dict(msg.headers or {})
        event = http.from_binary_event(http.HTTPMessage(headers=headers, body=msg.data))
        attrs = event.get_attributes()
        out = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in attrs.items()}
        out["data"] = event.get_data()
        out["nats_msg_id"] = headers.get("Nats-Msg-Id")
        print(json.dumps(out), flush=True)
        return 0
    finally:
        await nc.close()


async def publish(url, subject):
    event = CloudEvent(
        attributes={
            "id": "interop-from-python-1",
            "type": "com.example.PythonSaidHello",
            "source": "/interop/nats-py",
            "subject": "Greeting-1",
            "partitionkey": "Greeting-1",
            "correlationid": "corr-py",
        },
        data={"hello": "from python", "n": 7},
    )
    message = http.to_binary_event(event)
    nc = await nats.connect(url, connect_timeout=DEADLINE_S)
    try:
        js = nc.jetstream()
        ack = await js.publish(subject, message.body, headers=dict(message.headers), timeout=DEADLINE_S)
        print("PUBLISHED", ack.seq, flush=True)
        return 0
    finally:
        await nc.close()


async def publish_shape(url, subject, shape):
    headers, body, _key = shapes.build(shape)
    nc = await nats.connect(url, connect_timeout=DEADLINE_S)
    try:
        js = nc.jetstream()
        ack = await js.publish(subject, body, headers=headers, timeout=DEADLINE_S)
        print("PUBLISHED", ack.seq, flush=True)
        return 0
    finally:
        await nc.close()


async def read_plain(url, stream, subject):
    nc = await nats.connect(url, connect_timeout=DEADLINE_S)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            subject,
            stream=stream,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        msg = (await sub.fetch(1, timeout=DEADLINE_S))[0]
        await msg.ack()
        print(shapes.plain_line(dict(msg.headers or {}), msg.data), flush=True)
        return 0
    finally:
        await nc.close()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "consume":
        code = asyncio.run(consume(*sys.argv[2:5]))
    elif mode == "publish":
        code = asyncio.run(publish(*sys.argv[2:4]))
    elif mode == "publish-shape":
        code = asyncio.run(publish_shape(*sys.argv[2:5]))
    elif mode == "read-plain":
        code = asyncio.run(read_plain(*sys.argv[2:5]))
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        code = 64
    sys.exit(code)
