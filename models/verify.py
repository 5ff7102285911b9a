"""Accepts a converted SSDLite model only if it behaves like the original:
the bicycle in dog.jpg at a high score where the photo has it, none in
person.jpg. Usage: verify.py MODEL DOG_JPG PERSON_JPG"""

import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

BICYCLE = 1  # column j is COCO category id j + 1


def best_bicycle(session, path):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    x = np.asarray(img.resize((300, 300), Image.BILINEAR), dtype=np.float32)[None]
    scores, boxes = session.run(["scores", "boxes"], {"image": x})
    i = int(np.argmax(scores[0, :, BICYCLE]))
    ymin, xmin, ymax, xmax = boxes[0, i, 0]
    return float(scores[0, i, BICYCLE]), (xmin * w, ymin * h, xmax * w, ymax * h)


def main():
    model, dog, person = sys.argv[1:4]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    score, box = best_bicycle(session, dog)
    print(f"models: dog.jpg bicycle {score:.3f} at ({box[0]:.0f},{box[1]:.0f})-({box[2]:.0f},{box[3]:.0f})")
    # assets.md: bicycle 0.933 at about (139,114)-(574,441) px.
    if score < 0.85:
        sys.exit(f"models: bicycle score {score:.3f} too low: conversion is wrong")
    expected = (139, 114, 574, 441)
    if any(abs(a - b) > 40 for a, b in zip(box, expected)):
        sys.exit(f"models: bicycle box {box} far from {expected}: conversion is wrong")
    score, _ = best_bicycle(session, person)
    print(f"models: person.jpg best bicycle score {score:.3f}")
    if score > 0.5:
        sys.exit("models: a bicycle found in person.jpg: conversion is wrong")


if __name__ == "__main__":
    main()
