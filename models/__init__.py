"""Training of the noise classifier (40 MFCC and more -> Random Forest -> ONNX) and the shipped
model with its card."""
