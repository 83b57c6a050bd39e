"""The only places the worker reaches into kafka-python's private attributes, each because no
public route exists in kafka-python 3.0 (checked against its API): waiting for a transactional
request with a bound, and sending offsets without the blocking public wrapper."""

from __future__ import annotations

from kafka import KafkaProducer


def transaction_manager(producer: KafkaProducer):
    """The producer's TransactionManager: its send_offsets_to_transaction, begin_commit and
    begin_abort return futures that can be waited on with a timeout (the public
    KafkaProducer methods of the same names wait without one)."""
    return producer._transaction_manager


def wake_sender(producer: KafkaProducer) -> None:
    """Wake the producer's I/O thread so a newly queued transactional request goes out now."""
    producer._sender.wakeup()
