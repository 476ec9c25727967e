"""The benchmark (`run.py`) and the floor under it (`floor.py`)."""
