"""`python -m app`: serve the API with uvicorn (host/port from FORGE_HOST / FORGE_PORT)."""

import os

import uvicorn

if __name__ == "__main__":
    uvicorn.run(
        "app.main:app_factory",
        factory=True,
        host=os.environ.get("FORGE_HOST", "127.0.0.1"),
        port=int(os.environ.get("FORGE_PORT", "8000")),
    )
