import meshlens.auto  # noqa: F401, I001  (first: it must run before the framework is imported)
from flask import Flask

# Hello-world Flask app of the overhead benchmark. Its *_meshlens twin is this file with
# the one import line a service adds in front, and nothing else (run.py checks that).
app = Flask(__name__)


@app.route("/")
def hello() -> str:
    return "Hello, World!"
