"""The bundled photo rows of `edgevl.calibration.samples`: which file of which installed package
belongs to which split, with the caption, label and licence we wrote for it (see that module's
docstring for how the splits are drawn and kept disjoint)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    split: str
    package: str
    path: str  # inside the package folder
    caption: str
    label: str
    licence: str


ROWS: tuple[Row, ...] = (
    # --- parity (held out: judges the final artifact only) -------------------------------------
    Row("parity", "skimage", "data/astronaut.png", "a portrait of an astronaut in a space suit with a flag",
        "astronaut", "public domain (NASA)"),
    Row("parity", "skimage", "data/chelsea.png", "a ginger tabby cat looking to the side", "cat",
        "CC0 (Stefan van der Walt)"),
    Row("parity", "skimage", "data/coffee.png", "a cup of coffee on a saucer with a spoon", "coffee",
        "CC0 (Rachel Michetti)"),
    Row("parity", "skimage", "data/rocket.jpg", "a rocket standing on the launch pad", "rocket",
        "public domain (SpaceX)"),
    Row("parity", "skimage", "data/camera.png", "a black and white photo of a man with a camera on a tripod",
        "camera", "CC0 (Lav Varshney)"),
    Row("parity", "skimage", "data/coins.png", "a collection of old coins on a dark background", "coin",
        "no known copyright restrictions (Brooklyn Museum Collection)"),
    Row("parity", "skimage", "data/moon.png", "the cratered surface of the moon", "moon",
        "scikit-image test image; no licence stated beyond scikit-image's"),
    Row("parity", "skimage", "data/gravel.png", "a close-up of gravel stones", "gravel", "CC0 (CC0Textures)"),
    Row("parity", "sklearn", "datasets/images/flower.jpg", "a pink flower in close-up", "flower",
        "CC BY 2.0 (vultilion, Flickr)"),
    Row("parity", "skimage", "data/ihc.png",
        "a microscope slide of tissue stained brown and blue", "stained tissue",
        "no known copyright restrictions (scikit-image)"),
    Row("parity", "pydicom", "data/test_files/CT_small.dcm",
        "a grey CT scan slice through a vertebra of the spine", "CT scan",
        "NEMA WG04 sample CT1_UNC, downsized (pydicom test file)"),
    # --- gate (what the int8 accuracy gate measures on) and calibration (what int8 observes by
    # default); each row names its split --------------------------------------------------------
    Row("gate", "skimage", "data/clock_motion.png", "a wall clock with a blurred second hand", "clock",
        "public domain (Stefan van der Walt)"),
    Row("gate", "skimage", "data/grass.png", "a close-up of green grass", "grass", "CC0 (CC0Textures)"),
    Row("gate", "sklearn", "datasets/images/china.jpg", "a chinese temple with a curved roof among trees",
        "temple", "CC BY 2.0 (danielbuechele, Flickr)"),
    Row("gate", "skimage", "data/cell.png", "a microscope image of a single round cell on a grey background",
        "cell", "CC0 (scikit-image)"),
    Row("calibration", "skimage", "data/page.png", "a scanned page of printed text", "book",
        "scikit-image test image; no licence stated beyond scikit-image's"),
    Row("calibration", "skimage", "data/motorcycle_left.png", "a motorcycle parked in a room", "motorcycle",
        "Middlebury 2014 stereo data set (Scharstein et al.)"),
    Row("calibration", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
        "a portrait of a woman in a navy uniform", "uniform", "public domain (US Navy)"),
    Row("gate", "pywt", "data/ascent.npz",
        "a black and white photo of people climbing an outdoor metal staircase", "staircase",
        "public domain (public-domain-image.com, via PyWavelets)"),
    Row("gate", "mahotas", "demos/data/luispedro.jpg",
        "a close-up portrait of a man with dark curly hair in front of a glass building", "man",
        "mahotas demo photo of its author (MIT package)"),
    Row("gate", "pydicom", "data/test_files/examples_rgb_color.dcm",
        "a colour doppler ultrasound image of a lymph node with red and yellow blood flow", "ultrasound",
        "NEMA WG04 sample US1_UNCR, cropped (pydicom test file)"),
    Row("calibration", "skimage", "data/hubble_deep_field.jpg", "many distant galaxies seen by a space telescope",
        "galaxy", "public domain (NASA)"),
    Row("calibration", "skimage", "data/retina.jpg", "a photograph of the retina of a human eye", "eye",
        "CC0 (Mikael Haggstrom, Wikimedia Commons)"),
    Row("calibration", "skimage", "data/brick.png", "a close-up of a brick wall", "brick wall", "CC0 (CC0Textures)"),
    Row("calibration", "skimage", "data/color.png", "a chart of colour patches", "color chart",
        "scikit-image test image; no licence stated beyond scikit-image's"),
    Row("calibration", "skimage", "data/text.png",
        "handwritten mathematics on a sheet of paper photographed at an angle", "handwriting",
        "public domain (Wikipedia, via scikit-image)"),
    Row("calibration", "skimage", "data/microaneurysms.png",
        "a grey close-up of the back of an eye with dark blood vessels", "blood vessel",
        "CC0 (Andreas Maier)"),
    Row("calibration", "mahotas", "demos/data/nuclear.png",
        "glowing cell nuclei under a fluorescence microscope on a black background", "cell nucleus",
        "mahotas demo image (MIT package)"),
    Row("calibration", "pywt", "data/aero.npz",
        "a black and white aerial photograph of fields, woods and a railway line", "aerial photograph",
        "PyWavelets demo image (MIT package)"),
    Row("calibration", "pydicom", "data/test_files/examples_overlay.dcm",
        "an MRI scan across a human abdomen showing the liver and both kidneys", "MRI scan",
        "MR-SIEMENS-DICOM-WithOverlays sample, cropped (pydicom test file)"),
)
