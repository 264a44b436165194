"""A real Orthanc PACS (with its DICOMweb plugin) on 127.0.0.1 for the tests.

``start_orthanc`` writes a temporary configuration and storage folder, starts the
``Orthanc`` binary on a free loopback port with HTTP basic auth, and waits until it answers.
Debian: ``apt-get install orthanc orthanc-dicomweb`` (``.ci/run`` does).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PLUGIN_DIRS = (
    "/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins"
)
USER, PASSWORD = "sammed", "test-only-password-7f3c"


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if shutil.which("Orthanc") is None:
        return "the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb)"
    if _plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def _plugin() -> str | None:
    for d in PLUGIN_DIRS:
        for p in sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []:
            return str(p)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OrthancServer:
    process: subprocess.Popen
    port: int
    folder: Path

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_orthanc(folder: Path) -> OrthancServer:
    """Start Orthanc with storage in ``folder`` and basic auth (USER/PASSWORD)."""
    import requests

    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "sam-med-tests", "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"), "HttpPort": port, "HttpBindAddress": "127.0.0.1",
        "DicomServerEnabled": False, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [_plugin()], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1, "HttpTimeout": 30,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - kept open for the process
    proc = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=log)
    server = OrthancServer(proc, port, folder)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited early; see {folder / 'orthanc.log'}")
        try:
            if requests.get(f"{server.root}/system", auth=(USER, PASSWORD), timeout=1).ok:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer within 30 s; see {folder / 'orthanc.log'}")
