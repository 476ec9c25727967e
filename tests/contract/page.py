"""The request and response examples of the contract page, as the page prints them.

The page is `shared/contracts/mia-dicom-service-api.md` (the Mia-Platform DICOM service's API overview), kept
outside this repository; its examples are the contract's data and are held here character for character, so that
the suite runs on a clean checkout. `test_page_examples.py` compares them with the page whenever the page is there.

Each request example is a curl command. `tests.contract.curl` runs it with the real curl against the gateway,
after the substitutions its section names (placeholders such as `STUDY_UID` and the page's host).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Example:
    section: str  # the page's heading of the section the example is under
    summary: str  # the example's own title on the page (its `<summary>`)
    request: str  # the curl command, as printed
    response: str | None = None  # the response example, as printed (JSON text), when the page gives one

    def response_json(self) -> Any:
        """The response example as data; a `...` line (the page eliding the rest of a dataset or of the list)
        is dropped, with the comma before it."""
        assert self.response is not None, f"{self.section}: the page gives no response example"
        text = re.sub(r",\s*\n\s*\.\.\.\s*(?=\n)", "", self.response)
        return json.loads(text)


WORKITEM_CREATION = Example(
    "Workitem creation",
    "Example of workitem creation request",
    """curl --request POST \\
  --url https://your-dicom-service/workitems \\
  --header 'accept: application/json' \\
  --header 'content-type: application/json' \\
  --data '{
    "StudyInstanceUID": "1.2.752.24.5.2584605181.20150129083013.816906",
    "PatientID": "SDJ38WMD1MS01",
    "PatientName": "MARIO^ROSSI",
    "ScheduledStationAETitle": "NGV",
    "ScheduledProcedureStepStartDate": "20000101",
    "ScheduledProcedureStepStartTime": "120000",
    "ScheduledProcedureStepDescription": "Tac",
    "Modality": "CT",
    "AccessionNumber": "NDS83JF784N209D2"
  }'""",
)

WORKITEMS_RETRIEVAL = Example(
    "Workitems retrieval",
    "Example of workitem retrival request",
    """curl --request GET \\
  --url https://your-dicom-service/workitems?patientID=123456789""",
    """[
  {
    "00080005": {
      "vr": "CS",
      "Value": [
        "ISO-IR 192"
      ]
    },
    "00080050": {
      "vr": "SH",
      "Value": [
        "NDS83JF784N209D2"
      ]
    },
    "00080090": {
      "vr": "PN"
    },
    "00100010": {
      "vr": "PN",
      "Value": [
        {
          "Alphabetic": "MARIO^ROSSI"
        }
      ]
    },
    "00100020": {
      "vr": "LO",
      "Value": [
        "SDJ38WMD1MS01"
      ]
    },
    "00100030": {
      "vr": "DA"
    },
    "00100040": {
      "vr": "CS"
    },
    "00102000": {
      "vr": "LO"
    },
    "001021C0": {
      "vr": "US"
    },
    "0020000D": {
      "vr": "UI",
      "Value": [
        "1.2.752.24.5.2584605181.20150129083013.816908"
      ]
    },
    "00321032": {
      "vr": "PN"
    },
    "00321060": {
      "vr": "LO"
    },
    "00380010": {
      "vr": "LO"
    },
    "00380300": {
      "vr": "LO"
    },
    "00380500": {
      "vr": "LO"
    },
    "00400100": {
      "vr": "SQ",
      "Value": [
        {
          "00080060": {
            "vr": "CS",
            "Value": [
              "CT"
            ]
          },
          "00400001": {
            "vr": "AE",
            "Value": [
              "NGV"
            ]
          },
          "00400002": {
            "vr": "DA",
            "Value": [
              "20000101"
            ]
          },
          "00400003": {
            "vr": "TM",
            "Value": [
              "120000"
            ]
          },
          "00400006": {
            "vr": "PN"
          },
          "00400007": {
            "vr": "LO",
            "Value": [
              "Tac"
            ]
          },
          "00400009": {
            "vr": "SH"
          },
          "00400010": {
            "vr": "SH"
          }
        }
      ]
    },
    "00401001": {
      "vr": "SH"
    },
    "00402016": {
      "vr": "LO"
    },
    "00403001": {
      "vr": "LO"
    }
  }
]""",
)

WORKITEMS_DELETION = Example(
    "Workitems deletion",
    "Example of workitem deletion request",
    """curl --request DELETE \\
  --url https://your-dicom-service/workitems/1.123.45.6789.123456789""",
)

EXAMS_UPLOAD = Example(
    "Exams upload",
    "Example of exam upload request",
    """curl --request POST \\
  --url https://your-dicom-service/exams
  --header 'Content-Type: multipart/form-data; boundary=---boundary' \\
  --form file=@/path/to/dicom/file.dcm""",
    """[
  {
    "00081199": {
      "vr": "SQ",
      "Value": [
        {
          "00081150": {
            "vr": "UI",
            "Value": [
              "<sopClassUID>"
            ]
          },
          "00081155": {
            "vr": "UI",
            "Value": [
              "<objectUID>"
            ]
          },
          "00081190": {
            "vr": "UR",
            "Value": [
              "http://pacs.ris.development.zeeromed.cloud/o3-dpacs-wado/wado?requestType=WADO&studyUID=STUDY_UID&seriesUID=SERIES_UID&objectUID={objectUID}&contentType=application/dicom"
            ]
          }
        }
      ]
    }
  }
]""",
)

EXAMS_RETRIEVAL = Example(
    "Exams retrieval",
    "Example of exam retrieval request",
    """curl --request GET \\
  --url https://your-dicom-service/exams/studies?patientID=123456789""",
    """[
  {
    "00080005": {
      "vr": "CS",
      "Value": [
        "ISO_IR 192"
      ]
    },
    ...
  },
  ...
]""",
)

EXAM_THUMBNAIL = Example(
    "Exam retrieval",
    "Example of exam JPEG thumbnail retrieval request",
    """curl --request GET \\
  --url https://your-dicom-service/exams/studies/STUDY_UID/series/SERIES_UID/instance/INSTANCE_UID?fileType=image%2Fjpeg""",
)

CALLBACK = Example(
    "Callbacks",
    "Example of callback request from PACS",
    """curl -- request POST \\
  --url https://your-dicom-service/new-exam-callback
  --data '{
    "SourceID":"O3PROD",
    "StudyInstanceUID":"1.3.76.13.90696.2.20130926082332.5279531.1",
    "AccessionNumber":"62476609-1",
    "PatientID":"46803338",
    "NumberOfStudyRelatedSeries":1,
    "NumberOfStudyRelatedInstances":239,
    "ModalitiesInStudy": [
      "CT"
    ],
    "AeTitles": [
      "O3-PACS-57"
    ],
    "StationNames": [
      "Station ALFA",
      "Station BETA"
    ],
    "EventType":"COMPLETED",
    "StudyDate":"20130926",
    "StudyTime":"082329",
    "StudyID":null,
    "ReferringPhysicianName":"NO_DOC_NAME^NO_DOC_SURNAME",
    "StudyDescription":"DENTALSCAN SUP",
    "PatientName":"NO_SURNAME^NO_NAME",
    "PatientBirthDate":"19600101",
    "PatientSex":"F"
  }'""",
)

VIEWER_TOKEN = Example(
    "Viewer Token",
    "Example of token viewer retrival request",
    """curl -- request GET \\
  --url https://your-dicom-service/token?patientID={patientID}&studyUID=STUDY_UID&role=patient""",
    """{
  "token": "d3092u94r8d238fj29dd38d329d3287d3j29d"
}""",
)

UID_GENERATION = Example(
    "Unique Identifier (UID) generation",
    "Example of uid generation request",
    """curl --request GET \\
  --url https://your-dicom-service/uid""",
    """{
  "uid": "1.234.56.789.0123456789"
}""",
)

EXAMPLES = (WORKITEM_CREATION, WORKITEMS_RETRIEVAL, WORKITEMS_DELETION, EXAMS_UPLOAD, EXAMS_RETRIEVAL, EXAM_THUMBNAIL,
            CALLBACK, VIEWER_TOKEN, UID_GENERATION)
