"""The message shapes the interoperability tests publish from plain clients, shared by the
per-broker scripts (each adds this directory to sys.path).

  structured      a CloudEvent in structured mode, built with the official SDK
  json-event      a plain Event JSON body {id, type, source, timestamp, data}
                  with event-type / event-source headers (no CloudEvents at all)
  outbox-record   an outbox relay's record {eventId, eventType, aggregateId, payload,
                  timestamp} with event-type / event-id headers, keyed by the aggregate

Each shape returns (headers, body bytes, key); the Rust tests assert the same values.
"""

import json

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

SHAPES = ("structured", "json-event", "outbox-record")


def structured():
    event = CloudEvent(
        attributes={
            "id": "interop-structured-1",
            "type": "com.example.PythonSaidHello",
            "source": "/interop/python",
            "subject": "Greeting-1",
            "partitionkey": "Greeting-1",
            "correlationid": "corr-py",
            "datacontenttype": "application/json",
        },
        data={"hello": "structured", "n": 7},
    )
    fmt = JSONFormat()
    return {"content-type": fmt.get_content_type()}, fmt.write(event), "Greeting-1"


def json_event():
    body = {
        "id": "interop-json-event-1",
        "type": "order.created",
        "source": "order-service",
        "timestamp": "2026-12-06T10:00:00.000Z",
        "data": {"id": "ord-1", "total": 99.99},
    }
    headers = {"event-type": body["type"], "event-source": body["source"]}
    return headers, json.dumps(body).encode(), "ord-1"


def outbox_record():
    body = {
        "eventId": "interop-outbox-1",
        "eventType": "OrderPlaced",
        "aggregateId": "ord-2",
        "payload": {"orderId": "ord-2", "total": 12.5},
        "timestamp": "2026-12-06T10:00:01.000Z",
    }
    headers = {"event-type": body["eventType"], "event-id": body["eventId"]}
    return headers, json.dumps(body).encode(), "ord-2"


def build(shape):
    return {"structured": structured, "json-event": json_event, "outbox-record": outbox_record}[shape]()


def plain_line(headers, body):
    """What a plain consumer sees: the headers and the body parsed as JSON."""
    text = body.decode() if isinstance(body, (bytes, bytearray)) else body
    return json.dumps({"headers": {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in headers.items()}, "body": json.loads(text)})
