"""Where shards come from: synthetic dSprites, DeepMind's multi-dSprites file, COCO,
and ViT features of any of them."""
