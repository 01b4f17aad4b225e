"""The inference container: request decoding, response encoding, the Flask app, gunicorn."""
