"""What a patient row is: the data contract, the model matrix, the settings and the shared visual
language (style, waterfall). The bottom layer: imports nothing else of ours."""
