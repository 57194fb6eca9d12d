"""The JSON shapes of ``camkit serve``'s API (pydantic models, for the OpenAPI docs and checks).

The method listing's ``output`` is the API's word, not the library's: a method whose class says
``output = "cam"`` is listed as ``"map"`` (see :func:`api_output`).
"""
from __future__ import annotations

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
    summary: str
    cost: str = Field(description="what one explanation costs, in passes of the model")


class ClassScore(BaseModel):
    index: int
    name: str
    score: float = Field(description="softmax probability")


class MapItem(BaseModel):
    class_: int = Field(alias="class", description="the explained class index")
    name: str
    png: str = Field(description="base64 PNG: the map blended over the image at alpha 0.5, at the image's size")
    heatmap: str = Field(description="base64 PNG: the coloured map alone, at the image's size")
    npy: str = Field(description="base64 .npy: the float32 map at the model's input size, as the library returns it")


class ExplainResponse(BaseModel):
    model: str
    classes: list[ClassScore]
    maps: dict[str, list[MapItem]]
    timings: dict[str, Any]
    image: dict[str, int]


def api_output(output: str) -> str:
    """A method's ``output`` as the API names it: the library's ``"cam"`` is ``"map"`` here."""
    return "map" if output == "cam" else output


#: ``POST /explain`` reads its multipart form itself (within the size limit); this documents it
EXPLAIN_FORM = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {
                "image": {"type": "string", "format": "binary", "description": "the image file (PNG, JPEG, ...)"},
                "model": {"type": "string", "description": "a served model (GET /models); default: the first"},
                "methods": {"type": "string", "description": "comma-separated method names (GET /methods); default gradcam"},
                "target": {"type": "string", "description": "top1 (default), topK (K <= 10) or a class index"},
            },
        }}},
    }
}
