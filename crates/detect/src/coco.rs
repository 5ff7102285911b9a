//! Label lists for the two output layouts the detector understands.
//!
//! The SSD layout (TensorFlow's COCO-SSD) has one score column per COCO
//! category id 1..=90, including the ids COCO never used; the YOLO exports
//! have the 80 used categories in order.

/// COCO category names by id; empty strings are ids COCO leaves unused.
const COCO_BY_ID: [&str; 91] = [
    "",
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "",
    "backpack",
    "umbrella",
    "",
    "",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "",
    "dining table",
    "",
    "",
    "toilet",
    "",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

/// Labels of the SSD layout: column j is COCO id j + 1 (90 columns).
pub fn ssd_labels() -> Vec<String> {
    COCO_BY_ID[1..].iter().map(|s| s.to_string()).collect()
}

/// Labels of the common YOLOv8/YOLO11 COCO export (80 classes).
pub fn yolo_labels() -> Vec<String> {
    COCO_BY_ID[1..]
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn bicycle_is_column_1_in_both_layouts() {
        assert_eq!(super::ssd_labels().len(), 90);
        assert_eq!(super::ssd_labels()[1], "bicycle");
        assert_eq!(super::yolo_labels().len(), 80);
        assert_eq!(super::yolo_labels()[1], "bicycle");
        assert_eq!(super::yolo_labels()[79], "toothbrush");
    }
}
