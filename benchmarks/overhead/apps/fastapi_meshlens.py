import meshlens.auto  # noqa: F401, I001  (first: it must run before the framework is imported)
from fastapi import FastAPI

# Hello-world FastAPI app of the overhead benchmark. Its *_meshlens twin is this file with
# the one import line a service adds in front, and nothing else (run.py checks that).
app = FastAPI()


@app.get("/")
async def hello() -> dict[str, str]:
    return {"message": "Hello, World!"}
