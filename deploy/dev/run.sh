#!/usr/bin/env bash
# `make run`: a local Orthanc (private config and data under .run/), sample exams, and the gateway in front of it.
# Ctrl-C stops the gateway, then Orthanc. Ports can be moved with the variables below.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUN_DIR=${RUN_DIR:-.run/dev}
ORTHANC_HTTP_PORT=${ORTHANC_HTTP_PORT:-8042}
ORTHANC_DICOM_PORT=${ORTHANC_DICOM_PORT:-4242}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
ORTHANC_DIR="$RUN_DIR/orthanc"

stop_orthanc() { deploy/dev/orthanc.sh stop "$ORTHANC_DIR" || true; }
trap stop_orthanc EXIT

deploy/dev/orthanc.sh start "$ORTHANC_DIR" "$ORTHANC_HTTP_PORT" "$ORTHANC_DICOM_PORT"
.venv/bin/python deploy/dev/load_samples.py "http://127.0.0.1:$ORTHANC_HTTP_PORT/dicom-web"
new_exam=$(.venv/bin/python deploy/dev/new_exam.py "$RUN_DIR/new-exam.dcm")  # a file Orthanc does not hold yet

gw="http://127.0.0.1:$GATEWAY_PORT"
cat <<TXT

dicom-gateway on $gw, in front of Orthanc on http://127.0.0.1:$ORTHANC_HTTP_PORT (AUTH_MODE=none: development only)
Try:
  curl $gw/-/ready
  curl $gw/uid
  curl "$gw/exams/studies?PatientId=1CT1"
  curl "$gw/exams/studies/1.3.6.1.4.1.5962.1.2.1.20040119072730.12322/series?PatientId=1CT1"
  curl -F file=@$new_exam $gw/exams
  curl $gw/-/metrics
  curl $gw/openapi.yaml
Ctrl-C stops the gateway and Orthanc.

TXT

# Foreground, so Ctrl-C reaches the gateway; the EXIT trap then stops Orthanc.
PACS_SERVICE_URL="http://127.0.0.1:$ORTHANC_HTTP_PORT/dicom-web" \
PACS_PROFILE=orthanc \
AUTH_MODE=none \
PUBLIC_BASE_URL="$gw" \
LOG_FORMAT=${LOG_FORMAT:-console} \
  .venv/bin/dicom-gateway serve --host 127.0.0.1 --port "$GATEWAY_PORT" || true
