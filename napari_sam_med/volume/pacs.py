"""A PACS through DICOMweb (dicomweb-client): find series, retrieve them, store results.

Configuration (:func:`load_pacs_config`), first found wins per field: explicit arguments, the
environment (``SAM_MED_PACS_URL``, ``SAM_MED_PACS_TOKEN``, ``SAM_MED_PACS_USER``,
``SAM_MED_PACS_PASSWORD``), then a JSON config file (``--pacs-config``, or
``SAM_MED_PACS_CONFIG``)::

    {"url": "https://pacs.example.org/dicom-web", "token_env": "MY_PACS_TOKEN",
     "username": "alice", "password_env": "MY_PACS_PASSWORD",
     "verify": true, "ca_bundle": "/etc/ssl/hospital.pem", "timeout": 30, "retries": 3}

(``"token"``/``"password"`` may also stand in the file itself; keep it private.) Secrets live
only in the requests session: they are never printed, logged or written, and
:class:`PacsConfig`'s ``repr`` hides them. TLS certificates are verified unless the config
says ``"verify": false``.

Faults (unreachable, 401/403, 404, timeout, partial download) raise :class:`PacsError`, one
line naming the server and the UID. Connection errors, read errors and 429/5xx answers are
retried with exponential back-off (``retries`` times). Retrieval writes to a temporary
folder that is renamed only when every instance arrived, so a failure leaves no partial
series. Nothing here ever deletes anything on the PACS.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .dicom import DICOM_INSTALL_HINT

logger = logging.getLogger(__name__)

ENV_URL, ENV_TOKEN = "SAM_MED_PACS_URL", "SAM_MED_PACS_TOKEN"
ENV_USER, ENV_PASSWORD = "SAM_MED_PACS_USER", "SAM_MED_PACS_PASSWORD"
ENV_CONFIG = "SAM_MED_PACS_CONFIG"
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class PacsError(OSError):
    """A PACS request failed; the message names the server and the UID, never a secret."""


@dataclass(frozen=True)
class PacsConfig:
    """Where the PACS is and how to log in (secrets hidden from ``repr``)."""

    url: str
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify: bool | str = True
    timeout: float = 30.0
    retries: int = 3
    backoff: float = 0.5

    @property
    def server(self) -> str:
        """The URL without any user/password part, safe to show."""
        return redact_url(self.url)


@dataclass(frozen=True)
class SeriesHit:
    """One series found on the PACS."""

    study_uid: str
    series_uid: str
    patient_id: str = ""
    accession: str = ""
    modality: str = ""
    description: str = ""
    instances: int | None = None

    def summary(self) -> str:
        """One line for listings."""
        n = "?" if self.instances is None else self.instances
        return (f"{self.series_uid} [{self.modality or '?'}] {self.description!r} "
                f"patient {self.patient_id} accession {self.accession}: {n} instances "
                f"(study {self.study_uid})")  # fmt: skip


def redact_url(url: str) -> str:
    """``url`` without the ``user:password@`` part."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def load_pacs_config(
    url: str | None = None,
    config_path: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
) -> PacsConfig:
    """Build the :class:`PacsConfig` from arguments, environment and config file.

    Raises:
        PacsError: no URL anywhere, an unreadable config file, or a bad value (the message
            names the file and field, never a secret's value).
    """
    env = dict(os.environ) if env is None else env
    path = config_path or env.get(ENV_CONFIG)
    data: dict[str, Any] = {}
    if path:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise PacsError(
                f"PACS config {path}: cannot be read as JSON ({type(err).__name__})"
            ) from None
        if not isinstance(data, dict):
            raise PacsError(f"PACS config {path}: expected a JSON object")
    url = url or env.get(ENV_URL) or data.get("url")
    if not url:
        raise PacsError(f"no PACS URL: pass --url, set {ENV_URL} or give a config file with 'url'")
    parts = urlsplit(str(url))  # user:password@ in the URL moves to the credentials
    url_user, url_password = parts.username, parts.password
    token = env.get(ENV_TOKEN) or env.get(data.get("token_env", "") or "") or data.get("token")
    user = env.get(ENV_USER) or data.get("username") or url_user
    password = (env.get(ENV_PASSWORD) or env.get(data.get("password_env", "") or "")
                or data.get("password") or url_password)  # fmt: skip
    verify = data.get("ca_bundle") or data.get("verify", True)
    try:
        timeout, retries = float(data.get("timeout", 30)), int(data.get("retries", 3))
        backoff = float(data.get("backoff", 0.5))
    except (TypeError, ValueError):
        raise PacsError(f"PACS config {path}: timeout/retries/backoff must be numbers") from None
    if not 0 <= retries <= 10 or timeout <= 0:
        raise PacsError(f"PACS config {path}: retries must be 0..10 and timeout > 0")
    url = redact_url(str(url)).rstrip("/")
    return PacsConfig(url, token, user, password, verify, timeout, retries, backoff)


def _import_client() -> Any:
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"PACS access needs dicomweb-client: {DICOM_INSTALL_HINT}") from err
    return DICOMwebClient


def make_session(config: PacsConfig) -> Any:
    """A requests session with the auth and TLS setting of ``config`` (retries are done by
    dicomweb-client, see :class:`Pacs`)."""
    import requests

    session = requests.Session()
    session.verify = config.verify
    session.trust_env = False  # no ~/.netrc credentials or proxies picked up silently
    if config.token:
        session.headers["Authorization"] = f"Bearer {config.token}"
    elif config.username is not None:
        session.auth = (config.username, config.password or "")
    return session


class Pacs:
    """A DICOMweb PACS: :meth:`find_series`, :meth:`retrieve_series`, :meth:`store`."""

    def __init__(self, config: PacsConfig) -> None:
        self.config = config
        client_cls = _import_client()
        self._client = client_cls(
            url=config.url, session=make_session(config), timeout=config.timeout
        )
        # Connection errors, timeouts and 408/429/5xx answers: retried with exponential
        # back-off, at most `retries` times (dicomweb-client's own retry loop).
        self._client.set_http_retry_params(
            retry=config.retries > 0,
            max_attempts=config.retries + 1,
            wait_exponential_multiplier=max(1, int(config.backoff * 1000)),
            retriable_error_codes=_RETRY_STATUS,
        )

    def __repr__(self) -> str:
        return f"Pacs({self.config.server})"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - turned into one clear line below
            raise PacsError(f"PACS {self.config.server}: {what}: {describe_error(err)}") from None

    def find_series(
        self,
        patient_id: str | None = None,
        accession: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
    ) -> list[SeriesHit]:
        """Series matching every given key (QIDO-RS)."""
        filters = {k: v for k, v in (("PatientID", patient_id), ("AccessionNumber", accession),
                                     ("StudyInstanceUID", study_uid),
                                     ("SeriesInstanceUID", series_uid)) if v}  # fmt: skip
        fields = ["PatientID", "AccessionNumber", "SeriesDescription", "Modality",
                  "NumberOfSeriesRelatedInstances", "StudyInstanceUID"]  # fmt: skip
        what = "searching series " + " ".join(f"{k}={v}" for k, v in filters.items())
        found = self._call(what, self._client.search_for_series,
                           search_filters=filters, fields=fields)  # fmt: skip
        return [_hit(item) for item in found or []]

    def locate(self, series_uid: str, study_uid: str | None = None) -> SeriesHit:
        """The one series with this UID, or PacsError (404-like) naming it."""
        hits = self.find_series(study_uid=study_uid, series_uid=series_uid)
        if not hits:
            raise PacsError(f"PACS {self.config.server}: series {series_uid} not found")
        return hits[0]

    def retrieve_series(
        self, series_uid: str, cache_dir: str | os.PathLike, study_uid: str | None = None
    ) -> Path:
        """Download a series (WADO-RS) into ``cache_dir/<series UID>/``; return that folder.

        A complete earlier download (same instance count) is reused. Files arrive in a
        temporary folder renamed into place only when the whole series is there.

        Raises:
            PacsError: not found, refused, unreachable, timed out, or fewer instances than
                the PACS announced (partial download); nothing is left behind.
        """
        hit = self.locate(series_uid, study_uid)
        target = Path(cache_dir) / series_uid
        if target.is_dir() and hit.instances and len(list(target.glob("*.dcm"))) == hit.instances:
            logger.info("series %s already in %s", series_uid, target)
            return target
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".part-", dir=cache_dir))
        try:
            what = f"retrieving series {series_uid}"
            count = self._call(what, self._save_instances, hit, tmp)
            if hit.instances is not None and count != hit.instances:
                raise PacsError(
                    f"PACS {self.config.server}: {what}: partial download, {count} of "
                    f"{hit.instances} instances arrived"
                )
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("retrieved series %s (%d instances) to %s", series_uid, count, target)
        return target

    def _save_instances(self, hit: SeriesHit, folder: Path) -> int:
        count = 0
        for ds in self._client.iter_series(hit.study_uid, hit.series_uid):
            ds.save_as(str(folder / f"{ds.SOPInstanceUID}.dcm"), enforce_file_format=True)
            count += 1
        return count

    def store(self, paths: list[str | os.PathLike]) -> list[str]:
        """Store DICOM files (STOW-RS); return their SOP Instance UIDs.

        Storing an object whose SOP Instance UID the PACS already holds does not duplicate
        it (our SEG/RTSTRUCT UIDs derive from their content).
        """
        import pydicom

        datasets = [pydicom.dcmread(str(p)) for p in paths]
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        self._call(f"storing {', '.join(uids)}", self._client.store_instances, datasets)
        return uids


def _hit(item: dict[str, Any]) -> SeriesHit:
    def get(tag: str) -> Any:
        values = item.get(tag, {}).get("Value") or [None]
        return values[0]

    n = get("00201209")
    return SeriesHit(
        str(get("0020000D") or ""), str(get("0020000E") or ""), str(get("00100020") or ""),
        str(get("00080050") or ""), str(get("00080060") or ""), str(get("0008103E") or ""),
        int(n) if n is not None else None,
    )  # fmt: skip


def describe_error(err: BaseException) -> str:
    """A short, secret-free description of a requests/HTTP error."""
    import requests

    response = getattr(err, "response", None)
    last = getattr(err, "last_attempt", None)  # retrying.RetryError: retries used up
    if response is None and last is not None:
        response = last.value
    status = getattr(response, "status_code", None)
    if isinstance(err, PacsError):
        return str(err).split(": ", 2)[-1]
    if status in (401, 403):
        return (f"access denied (HTTP {status}); check the token or user/password "
                f"({ENV_TOKEN}, {ENV_USER}/{ENV_PASSWORD} or the config file)")  # fmt: skip
    if status == 404:
        return "not found (HTTP 404)"
    if status is not None:
        return f"HTTP {status} from the server" + (" (after retries)" if last else "")
    if isinstance(err, requests.exceptions.Timeout):
        return "timed out (no answer in time; retried with back-off)"
    if isinstance(err, requests.exceptions.SSLError):
        return "TLS certificate verification failed (set 'ca_bundle' in the PACS config)"
    if isinstance(err, requests.exceptions.ConnectionError):
        text = str(err)
        if "IncompleteRead" in text or "Connection broken" in text:
            return "connection broken during the download (partial download; retried)"
        return "unreachable (connection failed; retried with back-off)"
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return "connection broken during the download (partial download)"
    return f"{type(err).__name__}"
