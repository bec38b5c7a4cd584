"""Property-based fuzzing of the whole OpenAPI schema with schemathesis: no server error, no response that
breaks its declared schema, status code, content type or headers, no invalid input accepted.

Every media type the schema declares is generated: JSON, YAML (every JSON body is also declared as
application/yaml) and the upload's multipart form."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from app.core.config import Settings
from app.core.db import Database
from app.datasets import job_data, tokenizers
from app.demo_data import write_splits
from app.main import create_app
from app.resolve import ModelSource
from app.training_config import EMBEDDED_MODEL, optimizer_names

_project = Path(tempfile.mkdtemp(prefix="forge-fuzz-"))
write_splits(_project / "data", sizes=(8, 2, 2))
TOKEN = "fuzz-token"
_settings = Settings(project_dir=_project, api_token=TOKEN)
app = create_app(_settings)
app.state.db = Database(_settings)  # what the lifespan does; schemathesis calls the app without running it
_settings.runs_dir.mkdir(parents=True, exist_ok=True)
# What the first requests would load, loaded now: they would wait past schemathesis' 10 s timeout on a busy machine.
optimizer_names()  # the lifespan's warm-up: transformers
tokenizers.for_model(ModelSource(EMBEDDED_MODEL, "embedded"), _settings.cache_dir)  # a config's rows are measured here
job_data.in_child(job_data.load_tokenizer, EMBEDDED_MODEL, _project, [], _settings.cache_dir)  # an upload's, there

schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.auth()
class BearerToken:
    """Authenticates every generated request the way a client with FORGE_API_TOKEN does."""

    def get(self, case: schemathesis.Case, context: schemathesis.AuthContext) -> str:
        return TOKEN

    def set(self, case: schemathesis.Case, data: str, context: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_fails_or_breaks_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(
        # A schema-valid config can still name a dataset that is not there: that 422 is the point.
        excluded_checks=[positive_data_acceptance],
    )
