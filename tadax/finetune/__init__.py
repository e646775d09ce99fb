"""Fine-tuning on your own videos (`python -m tadax.finetune`): listing and splitting the
videos (`videos`), the data- and device-dependent choices (`preset`, `memory_plan`), the
linear probe (`linear_probe`), the steps and the work directory (`workflow`), the report
(`report`)."""
