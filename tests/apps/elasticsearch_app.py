import meshlens.auto  # noqa: F401  (the one line a service adds)

import os

from elasticsearch import Elasticsearch, NotFoundError
from fastapi import FastAPI

client = Elasticsearch(os.environ["ELASTICSEARCH_URL"], request_timeout=5, max_retries=0)
app = FastAPI()


@app.get("/health")
def health():
    return "ok"


@app.get("/search")
def index_and_search():
    client.index(index="items", id="1", document={"name": "secret-document"})
    found = client.search(index="items", query={"match": {"name": "secret-term"}})
    return {"hits": found["hits"]["total"]["value"]}


@app.get("/search/missing")
def search_missing_index():
    try:
        client.search(index="missing", query={"match_all": {}})
    except NotFoundError as exc:
        return {"status": exc.meta.status}
    return {"status": 200}
