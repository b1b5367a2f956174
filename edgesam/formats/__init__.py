"""Annotation formats: Label Studio brush RLE (:mod:`.brush_rle`), COCO polygons (:mod:`.coco_polygons`),
YOLO segmentation text (:mod:`.yolo_seg`) and Label Studio task JSON (:mod:`.label_studio_tasks`).

Import the modules directly; this package file imports nothing (numpy-only modules stay cheap to import).
"""
