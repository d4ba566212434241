"""Task metrics: PASCAL VOC detection AP (:mod:`.voc_ap`) and semantic-segmentation IoU (:mod:`.miou`)."""
