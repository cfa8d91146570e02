"""Request models of the search service: every input is typed and bounded.

`Flag` is how booleans are parsed everywhere (query strings and JSON): true/false, 1/0,
yes/no, on/off (any case) and JSON true/false/1/0; anything else, null included, is a
422, so `safe=maybe` can never silently switch safe mode off. JSON bodies are parsed by
pydantic's own parser (`model_validate_json`): malformed, deeply nested (recursion limit),
NaN/inf, ragged or mistyped input are validation errors, answered 422 like any other.
Bounds that come from the config (k <= serve.max_k, ...) are set when the app is built
(`request_models`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from laion_spark.serve.settings import ServeSettings

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
LANG_PATTERN = r"^[A-Za-z0-9_-]{1,16}$"
SUBSET_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
SAMPLE_ID_PATTERN = r"^[0-9a-f]{32}$"


def parse_flag(value):
    """Strict boolean: only true/false forms; everything else raises (-> 422)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise ValueError("must be true or false (true/false, 1/0, yes/no, on/off)")


Flag = Annotated[bool, BeforeValidator(parse_flag)]
Number = StrictFloat | StrictInt


class QueryInput(BaseModel):
    """Exactly one of text, image_b64 (standard base64) or vector."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    text: StrictStr | None = Field(None, min_length=1, max_length=1000)
    image_b64: StrictStr | None = None
    vector: list[Number] | None = Field(None, min_length=1, max_length=8192)
    # the text tower of a text query: a language code or group (None = detected)
    qlang: Annotated[str, Field(pattern=LANG_PATTERN)] | None = None

    @model_validator(mode="after")
    def _one_query(self):
        given = [k for k in ("text", "image_b64", "vector") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of text, image_b64 or vector")
        return self

    def image_bytes(self) -> bytes | None:
        if self.image_b64 is None:
            return None
        try:
            return base64.b64decode(self.image_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("image_b64 is not valid base64") from None


def request_models(serve: ServeSettings):
    """(SearchBody, SubsetBody) with this config's bounds."""
    max_page = serve.max_page_results  # (page + 1) * k is checked against it per request

    class SearchBody(QueryInput):
        k: Annotated[int, Field(ge=1, le=serve.max_k)] = 20
        safe: Flag = serve.safe_mode
        lang: Annotated[str, Field(pattern=LANG_PATTERN)] | None = None
        dedup: Flag = True
        page: Annotated[int, Field(ge=0, le=max_page)] = 0

    class SubsetBody(QueryInput):
        name: Annotated[str, Field(pattern=SUBSET_PATTERN)]
        mode: Literal["top", "threshold"] = "top"
        top_n: Annotated[int, Field(ge=1, le=serve.max_subset_rows)] = 100
        min_score: Annotated[float, Field(ge=-1e6, le=1e6)] | None = None
        safe: Flag = serve.safe_mode
        lang: Annotated[str, Field(pattern=LANG_PATTERN)] | None = None

        @model_validator(mode="after")
        def _threshold_needs_score(self):
            if self.mode == "threshold" and self.min_score is None:
                raise ValueError("mode threshold needs min_score")
            return self

    return SearchBody, SubsetBody
