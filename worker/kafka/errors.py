"""Why the worker stops: its own errors, and one line naming why connecting to Kafka failed
(a TLS handshake, a SASL login) when kafka-python's final error does not say."""

from __future__ import annotations

import logging
import ssl
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from kafka.errors import KafkaConnectionError, KafkaError, SaslAuthenticationFailedError

from worker.kafka.config import ServiceConfig

__all__ = ["RestoreError", "ServiceError", "naming_connect_failures"]


class ServiceError(RuntimeError):
    """The worker cannot go on (fenced by another instance, state not restorable)."""


class RestoreError(ServiceError):
    """A changelog partition could not be read to its end in time."""



class _LoggedErrors(logging.Handler):
    """Keeps the exceptions kafka-python logs while it retries a connection: its final error
    ("Unable to bootstrap from ...") does not say why each attempt failed."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: deque[BaseException] = deque(maxlen=100)

    def emit(self, record: logging.LogRecord) -> None:
        """Remember the exceptions among the record's arguments."""
        args = record.args if isinstance(record.args, tuple) else ()
        self.errors.extend(a for a in args if isinstance(a, BaseException))


@contextmanager
def naming_connect_failures(cfg: ServiceConfig) -> Iterator[None]:
    """Turn a Kafka error into a ServiceError naming a failed SASL login or TLS handshake, when
    kafka-python logged one meanwhile, so the user learns which setting to fix."""
    seen = _LoggedErrors()
    kafka_log = logging.getLogger("kafka")
    kafka_log.addHandler(seen)
    try:
        yield
    except KafkaError as exc:
        cause = _connect_failure(cfg, [*seen.errors, exc])
        if cause is None:
            raise
        raise ServiceError(cause) from exc
    finally:
        kafka_log.removeHandler(seen)


def _connect_failure(cfg: ServiceConfig, errors: Iterable[BaseException]) -> str | None:
    """One line naming why connecting failed, from the latest error that tells (a TLS handshake
    error, a failed SASL login), else None; it never quotes a password."""
    where = cfg.bootstrap
    protocol = str(cfg.kafka.get("security_protocol", "PLAINTEXT")).upper()
    user = cfg.kafka.get("sasl_plain_username")
    mechanism = cfg.kafka.get("sasl_mechanism")
    who = "SASL user " + (repr(user) if user else "(no sasl_plain_username)") + (
        f" ({mechanism})" if mechanism else "")
    check = "sasl_plain_username/sasl_plain_password" if user else "the sasl_* settings"
    for exc in reversed(list(errors)):
        chain = _chain(exc)
        tls = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
        if isinstance(tls, ssl.SSLCertVerificationError):
            names = tls.verify_code in (62, 64)  # X509_V_ERR_HOSTNAME / IP_ADDRESS_MISMATCH
            hint = "the bootstrap host against the certificate's names" if names else "ssl_cafile"
            return (f"TLS handshake with {where} failed: certificate verify failed: "
                    f"{tls.verify_message} (check {hint})")
        if tls is not None:
            return (f"TLS handshake with {where} failed: {tls.reason or tls} (check that the "
                    f"listener speaks {protocol})")
        if any(isinstance(e, SaslAuthenticationFailedError) for e in chain):
            return f"authentication failed for {who} on {where} (check {check})"
        if (protocol.startswith("SASL_") and isinstance(exc, KafkaConnectionError)
                and "socket disconnected" in str(exc)):
            # How kafka-python 3.0 reports a failed login: Kafka answers it with an error and
            # closes the connection, and the client drops the answer for the closed socket.
            return (f"authentication failed for {who} on {where}: the broker closed the "
                    f"connection before the login completed (check {check}, and that the "
                    f"listener speaks {protocol})")
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or while handling."""
    chain = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    return chain
