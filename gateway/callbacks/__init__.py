"""`/new-exam-callback`: stored new-exam events, their reliable delivery, and Orthanc change-feed detection."""
