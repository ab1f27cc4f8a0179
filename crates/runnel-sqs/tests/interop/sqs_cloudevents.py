"""A plain SNS/SQS client (boto3) that knows nothing of Runnel, with the official
CloudEvents SDK. Used by tests/interop.rs.

  read ENDPOINT QUEUE_URL COUNT     receive COUNT messages, parse each as a CloudEvent
                                    (HTTP binding: SQS attributes as headers), print JSON lines
  publish ENDPOINT TOPIC_ARN ID     publish one binary-mode CloudEvent to the FIFO topic
  publish-shape ENDPOINT TOPIC_ARN SHAPE
                                    publish one message of SHAPE (scripts/interop/shapes.py:
                                    structured, json-event, outbox-record) as a plain client
  read-plain ENDPOINT QUEUE_URL     receive one message as a plain client does (attributes,
                                    the body parsed as JSON), print it as one JSON line
"""
import json
import os
import sys
import time

import boto3
from cloudevents.core.bindings import http
from cloudevents.core.v1.event import CloudEvent

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../../scripts/interop"))
import shapes  # noqa: E402

DEADLINE_SECONDS = 30


def clients(endpoint):
    kw = dict(
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    return boto3.client("sns", **kw), boto3.client("sqs", **kw)


def read(endpoint, queue_url, count):
    _, sqs = clients(endpoint)
    deadline = time.time() + DEADLINE_SECONDS
    seen = 0
    while seen < count:
        if time.time() > deadline:
            sys.exit(f"timed out: {seen} of {count} messages")
        out = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
        )
        for m in out.get("Messages", []):
            headers = {
                k: v["StringValue"]
                for k, v in m.get("MessageAttributes", {}).items()
                if "StringValue" in v
            }
            event = http.from_http_event(http.HTTPMessage(headers, m["Body"].encode("utf-8")))
            data = event.get_data()
            if isinstance(data, (bytes, bytearray)):
                data = {"bytes": list(data)}
            print(
                json.dumps(
                    {
                        "id": event.get_id(),
                        "type": event.get_type(),
                        "source": event.get_source(),
                        "specversion": event.get_specversion(),
                        "subject": event.get_subject(),
                        "partitionkey": event.get_extension("partitionkey"),
                        "correlationid": event.get_extension("correlationid"),
                        "tenant": event.get_extension("tenant"),
                        "datacontenttype": event.get_datacontenttype(),
                        "data": data,
                        "mode": "structured" if headers.get("content-type", "").startswith("application/cloudevents+json") else "binary",
                    }
                ),
                flush=True,
            )
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
            seen += 1


def publish(endpoint, topic_arn, event_id):
    sns, _ = clients(endpoint)
    event = CloudEvent(
        {
            "id": event_id,
            "type": "com.example.PaymentCaptured",
            "source": "urn:python:interop",
            "subject": "Payment-9",
            "partitionkey": "Payment-9",
            "datacontenttype": "application/json",
        },
        {"amount": 42, "currency": "EUR"},
    )
    message = http.to_binary_event(event)
    attributes = {
        k: {"DataType": "String", "StringValue": v} for k, v in message.headers.items()
    }
    body = message.body
    sns.publish(
        TopicArn=topic_arn,
        Message=body.decode("utf-8") if isinstance(body, bytes) else body,
        MessageAttributes=attributes,
        MessageGroupId="Payment-9",
        MessageDeduplicationId=event_id,
    )
    print("published", event_id, flush=True)


def publish_shape(endpoint, topic_arn, shape):
    sns, _ = clients(endpoint)
    headers, body, key = shapes.build(shape)
    attributes = {k: {"DataType": "String", "StringValue": v} for k, v in headers.items()}
    sns.publish(
        TopicArn=topic_arn,
        Message=body.decode("utf-8") if isinstance(body, bytes) else body,
        MessageAttributes=attributes,
        MessageGroupId=key,
        MessageDeduplicationId=f"{shape}-{time.time_ns()}",
    )
    print("published", shape, flush=True)


def read_plain(endpoint, queue_url):
    _, sqs = clients(endpoint)
    deadline = time.time() + DEADLINE_SECONDS
    while time.time() < deadline:
        out = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
        )
        for m in out.get("Messages", []):
            attributes = {
                k: v["StringValue"]
                for k, v in m.get("MessageAttributes", {}).items()
                if "StringValue" in v
            }
            print(shapes.plain_line(attributes, m["Body"]), flush=True)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
            return
    sys.exit("timed out: no message")


if __name__ == "__main__":
    verb = sys.argv[1]
    if verb == "read":
        read(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif verb == "publish":
        publish(sys.argv[2], sys.argv[3], sys.argv[4])
    elif verb == "publish-shape":
        publish_shape(sys.argv[2], sys.argv[3], sys.argv[4])
    elif verb == "read-plain":
        read_plain(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown verb {verb}")
