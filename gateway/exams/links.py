"""The gateway's own URLs for exams, used wherever an answer would otherwise name the internal PACS."""

from __future__ import annotations

from urllib.parse import quote


class ExamLinks:
    def __init__(self, *, public_base_url: str) -> None:
        self._base = public_base_url.rstrip("/")

    def _patient(self, patient_id: str) -> str:
        return f"PatientId={quote(patient_id, safe='')}"

    def study(self, study: str, patient_id: str) -> str:
        return f"{self._base}/exams/studies/{study}/series?{self._patient(patient_id)}"

    def series(self, study: str, series: str, patient_id: str) -> str:
        return f"{self._base}/exams/studies/{study}/series/{series}/instances?{self._patient(patient_id)}"

    def instance(self, study: str, series: str, instance: str, patient_id: str) -> str:
        return (f"{self._base}/exams/studies/{study}/series/{series}/instance/{instance}"
                f"?{self._patient(patient_id)}&fileType=application%2Fdicom")
