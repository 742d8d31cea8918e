"""The bundle runtime: what runs on the device. See loader.py; it must stay an island."""
