"""Datasets: readers (SA-1B, COCO, image folders), RLE, transforms, synthetic scenes, teacher cache."""
