"""Schema of ``conf/base/parameters_export.yml`` (top-level key ``export``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from xoron_pipelines.device import DeviceSpec
from xoron_pipelines.training.schema import STAGE_ORDER as STAGES  # exportable stages, in training order
from xoron_pipelines.validation import StrictModel

Format = Literal["hf", "gguf", "onnx", "lora"]
GGUFType = Literal["f16", "q8_0"]


class Params(StrictModel):
    """What to export, from which stage, and where."""

    source: Literal[STAGES] = Field("preference", description="stage whose model is exported (data/06_models/<stage>)")
    output_dir: str = Field(
        "data/07_model_output/export",
        min_length=1,
        description=(
            "directory of the export_* catalog entries: conf/base/globals.yml export_output_dir, or --params "
            "export.output_dir=DIR (both read by the catalog); the manifest records paths under it"
        ),
    )
    formats: list[Format] = Field(default_factory=lambda: ["hf", "gguf", "onnx", "lora"], min_length=1)
    gguf_types: list[GGUFType] = Field(default_factory=lambda: ["f16", "q8_0"], min_length=1)
    onnx_opset: int = Field(18, ge=17, le=23)
    onnx_int8: bool = True
    onnx_eval_rows: int = Field(8, gt=0, description="held-out packed_val rows for the int8 accuracy figures")
    onnx_eval_length: int = Field(64, ge=2)
    device: DeviceSpec = Field(
        "auto",
        description="where the ONNX parity check runs our model (onnxruntime itself runs on the CPU): "
        "auto (the first CUDA GPU, else the CPU) | cpu | cuda | cuda:N",
    )
    register_mlflow: bool = True
    registered_model_name: str = Field("xoron", min_length=1)
    prefer_native: bool = Field(True, description="HF dir as a native transformers class where lossless")
    max_new_tokens: int = Field(
        256,
        gt=0,
        description=(
            "generation_config.json max_new_tokens of the HF export: the default of model.generate(), "
            "pipeline('text-generation') and the MLflow pyfunc"
        ),
    )

    license: str = Field(
        "mit",
        min_length=1,
        pattern=r"^[A-Za-z0-9.+-]+$",
        description="licence identifier of the HF export's model card (license: in its YAML header; seed 003: MIT)",
    )

    @model_validator(mode="after")
    def _unique(self) -> Params:
        for name in ("formats", "gguf_types"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {values}")
        if self.register_mlflow and "hf" not in self.formats:
            raise ValueError("register_mlflow needs 'hf' in formats (the registered model is the HF directory)")
        return self
