"""The admission webhook: Flask under gunicorn over TLS (issue: admission webhook)."""
