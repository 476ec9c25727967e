"""DICOM itself: UIDs, Value Representations, DICOM JSON, Part 10 headers and the PatientID byte rule."""
