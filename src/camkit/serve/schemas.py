"""The JSON shapes of ``camkit serve``'s API (pydantic models, for the OpenAPI docs and checks).

The method listing's ``output`` is the API's word, not the library's: a method whose class says
``output = "cam"`` is listed as ``"map"`` (see `api_output`); its ``summary`` is the first
paragraph of the class's docstring as plain text (`plain_text`: no reStructuredText markup).
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Optional

from pydantic import BaseModel, Field


class ModelInfo(BaseModel):
    name: str
    input_size: list[int]
    num_classes: Optional[int]
    default_layer: Optional[str]


class MethodInfo(BaseModel):
    name: str
    output: str = Field(description="'map' ([0, 1] heat map) or 'attribution' (signed RGB gradient image)")
    summary: str = Field(description="the method and its formula, plain text")
    cost: str = Field(description="what one explanation costs, in passes of the model")
    expensive: bool = Field(description="its cost grows with the layer's channels or a sample count; its jobs "
                                        "wait in a queue of their own")


class ClassScore(BaseModel):
    index: int
    name: str
    score: float = Field(description="softmax probability")


class MapItem(BaseModel):
    class_: int = Field(alias="class", description="the explained class index")
    name: str
    png: Optional[str] = Field(None, description="base64 PNG: the map blended over the image at alpha 0.5, at the "
                               "image's size (reduced to at most 1024 px per side); formats all and png")
    heatmap: Optional[str] = Field(None, description="base64 PNG: the coloured map alone, as png; formats all and png")
    npy: Optional[str] = Field(None, description="base64 .npy: the map at the model's input size, as the library "
                               "returns it; float32 (format all) or float16 (format float16: about 3 significant "
                               "digits, values below 6e-8 in magnitude become 0)")


class ExplainResponse(BaseModel):
    model: str
    classes: list[ClassScore]
    maps: dict[str, list[MapItem]]
    timings: dict[str, Any]
    image: dict[str, int]


def api_output(output: str) -> str:
    """A method's ``output`` as the API names it: the library's ``"cam"`` is ``"map"`` here."""
    return "map" if output == "cam" else output


_SEE = re.compile(r"\s*\(see :[\w:]+:`[^`]*`\)|;\s*see :[\w:]+:`[^`]*`")  # pointers into the library's docs
_ROLE = re.compile(r":[\w:]+:`(~?)([^`<]*?)\s*(?:<[^>]*>)?`")  # `a.B` -> B, `f` -> f


def plain_text(docstring: str) -> str:
    """The first paragraph of ``docstring`` on one line, without reStructuredText markup (roles,
    ````literals````, pointers such as ``(see `f`)``)."""
    text = " ".join(inspect.cleandoc(docstring).split("\n\n")[0].split())
    text = _ROLE.sub(lambda m: m.group(2).split(".")[-1] if m.group(1) else m.group(2), _SEE.sub("", text))
    return text.replace("`", "")


#: ``POST /explain`` reads its multipart form itself (within the size limit); this documents it
EXPLAIN_FORM = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {
                "image": {"type": "string", "format": "binary",
                          "description": "the image file: PNG, JPEG, WebP, BMP or TIFF (others: 415), up to the "
                                         "server's MB and megapixels (413); decoded to at most 1024 px per side"},
                "model": {"type": "string", "description": "a served model (GET /models); default: the first"},
                "methods": {"type": "string", "description": "comma-separated names of served methods (GET /methods); "
                                                            "default gradcam"},
                "target": {"type": "string", "description": "top1 (default), topK (K <= 10), a class index (digits "
                                                           "0-9) or a class name (GET /models/{name}/classes; "
                                                           "case-insensitive, e.g. espresso or 'tabby cat')"},
                "format": {"type": "string", "enum": ["all", "png", "float16"], "default": "all",
                           "description": "what each map item holds: all (png, heatmap and a float32 npy), png (png "
                                          "and heatmap) or float16 (npy alone, float16: the smallest answer). An "
                                          "answer past the server's cap (camkit serve --max-response-mb) is a 413 "
                                          "whose detail gives the float16 size"},
            },
        }}},
    }
}

#: ``POST /explain``'s refusals, for the docs
EXPLAIN_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed form (not multipart, no image file part, a field sent as a file)"},
    403: {"description": "Host not a name of this server, or a request from another site's page"},
    408: {"description": "the body stopped arriving for the read timeout (camkit serve --read-timeout)"},
    413: {"description": "upload over the MB or megapixel limit, a decompression bomb, or an answer over the cap"},
    415: {"description": "not a PNG, JPEG, WebP, BMP or TIFF image"},
    422: {"description": "unknown or unserved model / method, bad target or format, or a method that cannot "
                         "explain the model"},
    503: {"description": "a queue is full (Retry-After says when to retry)"},
    504: {"description": "reading, decoding, explaining and encoding took longer than the timeout"},
}
