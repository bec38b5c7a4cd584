"""`python -m app`: serve the API with uvicorn on FORGE_HOST:FORGE_PORT (default 127.0.0.1:8000).

With no FORGE_API_TOKEN it listens only on a loopback address unless FORGE_ALLOW_NO_AUTH=1.
"""

import sys

import uvicorn
from pydantic import ValidationError

from app.core.config import Settings

if __name__ == "__main__":
    try:
        settings = Settings()
        settings.check_serving()
    except (ValidationError, ValueError) as exc:
        sys.exit(f"forge-trainer API: {exc}")
    uvicorn.run("app.main:app_factory", factory=True, host=settings.host, port=settings.port)
