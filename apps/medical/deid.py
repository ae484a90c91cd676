"""Privacy: pseudonymised identifiers, PS3.15 basic-profile scrubbing, and a redactor for text.

Nothing the app writes (logs, metrics, findings, reports, DICOM-SEG, dashboard data) may carry a
patient identifier. Three layers:

1. Outputs are keyed by a pseudonym: HMAC-SHA256 of the identifier under a per-installation secret key
   (``DSV_HOME/medical/pseudonym.key``, created with mode 0600, or ``DSV_MEDICAL_PSEUDONYM_KEY``), so
   the same patient/series maps to the same pseudonym on this site and cannot be reversed elsewhere.
2. Datasets that leave the app (the DICOM-SEG's copy of the patient/study modules) go through
   :func:`deidentify_dataset`, which empties or replaces the PS3.15 Table E.1-1 basic-profile attributes
   listed below. UIDs are kept ("Retain UIDs" option) because the SEG must reference the source
   series to overlay it in the site's viewer.
3. Every free text we write (reasons, reports, history) passes through :class:`Redactor`, built from
   the identifying values actually seen in the headers, as a belt-and-braces check.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from pathlib import Path

# PS3.15 Table E.1-1 basic application level confidentiality profile: the attributes of that table
# that occur in CT image / SEG objects (identifiers, names, dates, institution, device, free text).
BASIC_PROFILE_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientNames",
    "OtherPatientIDsSequence", "PatientBirthDate", "PatientBirthTime", "PatientBirthName", "PatientAge",
    "PatientAddress", "PatientMotherBirthName", "PatientTelephoneNumbers", "PatientWeight", "PatientSize",
    "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "EthnicGroup", "Occupation",
    "AdditionalPatientHistory", "PatientComments", "PatientReligiousPreference", "PatientInsurancePlanCodeSequence",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy", "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician",
    "AccessionNumber", "StudyID", "StationName", "DeviceSerialNumber", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime",
    "AcquisitionDateTime", "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments",
    "RequestAttributesSequence", "ReferencedPatientSequence", "ReferencedStudySequence",
    "ResponsiblePerson", "ResponsibleOrganization", "CountryOfResidence", "RegionOfResidence",
    "PatientState", "InstitutionCodeSequence", "PerformedProcedureStepDescription",
)
# Values worth hunting for in free text (short generic values like sex "M" are not).
_TEXT_PHI_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate",
                      "PatientAddress", "PatientTelephoneNumbers", "InstitutionName", "InstitutionAddress",
                      "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "AccessionNumber",
                      "PatientBirthName", "PatientMotherBirthName", "StationName", "DeviceSerialNumber",
                      "InstitutionalDepartmentName", "NameOfPhysiciansReadingStudy")


class Pseudonymiser:
    """Keyed hash (HMAC-SHA256) of identifiers: stable on one site, meaningless without the key."""

    def __init__(self, key: bytes):
        self._key = key

    @classmethod
    def for_home(cls, app_dir: Path) -> Pseudonymiser:
        env = os.environ.get("DSV_MEDICAL_PSEUDONYM_KEY")
        if env:
            return cls(env.encode())
        path = Path(app_dir) / "pseudonym.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return cls(path.read_text().strip().encode())

    def __call__(self, value: str, prefix: str = "S") -> str:
        digest = hmac.new(self._key, str(value).encode(), hashlib.sha256).hexdigest()
        return f"{prefix}-{digest[:16]}"


def collect_phi(headers) -> dict[str, str]:
    """Identifying values present in these headers (keyword -> value), for redaction."""
    found: dict[str, str] = {}
    for ds in headers:
        for kw in _TEXT_PHI_KEYWORDS:
            value = ds.get(kw)
            if value is None:
                continue
            text = str(value).strip()
            if len(text) >= 3 and kw not in found:
                found[kw] = text
    return found


class Redactor:
    """Replace known identifying strings (and their name parts) in text by ``[REDACTED]``."""

    def __init__(self, phi_values=()):
        parts: set[str] = set()
        for value in phi_values:
            value = str(value).strip()
            if len(value) < 3:
                continue
            parts.add(value)
            parts.add(value.replace("^", " ").strip())
            for token in re.split(r"[\^\s,]+", value):
                if len(token) >= 3:
                    parts.add(token)
            if re.fullmatch(r"\d{8}", value):  # a DICOM date: also its ISO spelling
                parts.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
        self._pattern = (re.compile("|".join(re.escape(p) for p in sorted(parts, key=len, reverse=True)),
                                    re.IGNORECASE) if parts else None)

    def __call__(self, text: str) -> str:
        if not self._pattern or not text:
            return text
        return self._pattern.sub("[REDACTED]", text)


def deidentify_dataset(ds, pseudonym: str) -> None:
    """In place: apply the basic profile (keep UIDs); PatientName/PatientID become the pseudonym."""
    for kw in BASIC_PROFILE_KEYWORDS:
        if kw in ds:
            delattr(ds, kw)
    ds.PatientName = f"{pseudonym}^"  # one-component person name (PS3.5 6.2.1.2)
    ds.PatientID = pseudonym
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "DICOM PS3.15 Basic Profile; Retain UIDs; keyed-hash pseudonym"


class RedactingFilter(logging.Filter):
    """Logging filter that passes every record's message through a Redactor (defence in depth)."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor(record.getMessage())
        record.args = ()
        return True
