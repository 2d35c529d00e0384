"""The baseline: a FastAPI hello-world route, served by uvicorn exactly as `keyturn serve` is."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"message": "hello"}
