import meshlens.auto  # noqa: F401  (the one line a service adds)

import os
import uuid

import asyncpg
import psycopg
import psycopg2
import redis
import redis.asyncio
import sqlalchemy
from fastapi import FastAPI

PG_HOST = os.environ.get("PG_HOST", "127.0.0.1")
PG_USER = os.environ.get("PG_USER", "postgres")
PG_DB = os.environ.get("PG_DB", "test")
DSN = f"postgresql://{PG_USER}@{PG_HOST}:5432/{PG_DB}"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

# The same five statements for every driver: CREATE, INSERT and three SELECTs, one of
# them written in lower case.
STATEMENTS = (
    "CREATE TEMP TABLE IF NOT EXISTS meshlens_items (v int)",
    "INSERT INTO meshlens_items VALUES (1), (2)",
    "SELECT v FROM meshlens_items",
    "SELECT count(*) FROM meshlens_items",
    "select max(v) from meshlens_items",
)

app = FastAPI()
engine = sqlalchemy.create_engine(f"postgresql+psycopg://{PG_USER}@{PG_HOST}:5432/{PG_DB}", pool_size=2)
# The pool's first connection, and the dialect's queries that come with it, before any request.
with engine.connect():
    pass
sync_redis = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
async_redis = redis.asyncio.Redis.from_url(REDIS_URL, socket_timeout=5)


@app.get("/health")
def health():
    return "ok"


@app.get("/psycopg")
def use_psycopg():
    with psycopg.connect(DSN, connect_timeout=5) as conn:
        for statement in STATEMENTS:
            cursor = conn.execute(statement)
        result = cursor.fetchone()[0]
    return {"max": result}


@app.get("/psycopg/fail")
def psycopg_fail():
    with psycopg.connect(DSN, connect_timeout=5) as conn:
        try:
            conn.execute("SELECT * FROM meshlens_no_such_table")
        except psycopg.errors.UndefinedTable:
            return {"failed": True}
    return {"failed": False}


@app.get("/psycopg2")
def use_psycopg2():
    conn = psycopg2.connect(DSN, connect_timeout=5)
    try:
        with conn, conn.cursor() as cursor:
            for statement in STATEMENTS:
                cursor.execute(statement)
            result = cursor.fetchone()[0]
    finally:
        conn.close()
    return {"max": result}


@app.get("/asyncpg")
async def use_asyncpg():
    conn = await asyncpg.connect(DSN, timeout=5)
    try:
        for statement in STATEMENTS[:2]:
            await conn.execute(statement)
        await conn.fetch(STATEMENTS[2])
        await conn.fetchval(STATEMENTS[3])
        result = await conn.fetchval(STATEMENTS[4])
    finally:
        await conn.close()
    return {"max": result}


@app.get("/sqlalchemy")
def use_sqlalchemy():
    with engine.begin() as conn:
        for statement in STATEMENTS[:4]:
            conn.execute(sqlalchemy.text(statement))
        # A statement SQLAlchemy compiles itself.
        table = sqlalchemy.table("meshlens_items", sqlalchemy.column("v"))
        result = conn.execute(sqlalchemy.select(sqlalchemy.func.max(table.c.v))).scalar()
    return {"max": result}


@app.get("/redis")
def use_redis():
    key = f"meshlens-test:{uuid.uuid4().hex}"
    sync_redis.set(key, "1", ex=60)
    sync_redis.get(key)
    sync_redis.get(key)
    pipe = sync_redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, 60)
    value = pipe.execute()[0]
    return {"value": value}


@app.get("/redis-asyncio")
async def use_async_redis():
    key = f"meshlens-test:{uuid.uuid4().hex}"
    await async_redis.set(key, "1", ex=60)
    await async_redis.get(key)
    await async_redis.get(key)
    async with async_redis.pipeline() as pipe:
        pipe.incr(key)
        pipe.expire(key, 60)
        value = (await pipe.execute())[0]
    return {"value": value}
