"""``gendistill image-to-3d``: Isotropic3D's SDS from one image's CLIP embedding, on the text-to-3D machinery."""
