"""Files the hooks write, read back with the real Python readers."""
import torch
from PIL import Image

LINEAR = """
[trainer]
max_steps = {steps}
[task]
plugin = "scripted_task"
dim = 3
[optimizer]
type = "sgd"
lr = 1.0
"""


def test_ema_model_pt_loads_in_torch_load_with_the_closed_form_values(run_tloop):
    ws = run_tloop(LINEAR.format(steps=5) + '[[hooks]]\nplugin = "ema"\ndecay = 0.75\n')
    state = torch.load(ws / "ema_model.pt", weights_only=True)
    assert list(state) == ["w"]
    # scripted_task with SGD lr 1: w_t = 1 - t. First update copies, then ema = 0.75 ema + 0.25 w_t.
    ema = 0.0
    for t in range(2, 6):
        ema = 0.75 * ema + 0.25 * (1.0 - t)
    assert state["w"].dtype == torch.float32
    torch.testing.assert_close(state["w"], torch.full((3,), ema), rtol=1e-6, atol=1e-6)


def test_png_images_decode_to_the_logged_pixels(run_tloop):
    ws = run_tloop(LINEAR.format(steps=2) + '[[hooks]]\nplugin = "image_files"\n', 'task.image_keys=["grid/rgba"]')
    image = Image.open(ws / "visualizations" / "1" / "grid" / "rgba.png")
    assert image.format == "PNG"
    assert image.size == (2, 3)
    assert image.mode == "RGBA"
    for y in range(3):
        for x in range(2):
            assert image.getpixel((x, y)) == (10 * x, 20 * y, 7, 255 - 100 * x)


def test_jpg_images_flatten_alpha_onto_white(run_tloop):
    ws = run_tloop(
        LINEAR.format(steps=1) + '[[hooks]]\nplugin = "image_files"\nimage_format = "jpg"\n',
        'task.image_keys=["grid/rgba"]',
    )
    image = Image.open(ws / "visualizations" / "1" / "grid" / "rgba.jpg")
    assert image.format == "JPEG"
    assert image.size == (2, 3)
    assert image.mode == "RGB"
    # Pixel (1, 0) is (10, 0, 7) at alpha 155: over white that is about (105, 100, 104).
    expected = [round((c * 155 + 255 * 100) / 255) for c in (10, 0, 7)]
    got = image.getpixel((1, 0))
    assert all(abs(g - e) <= 24 for g, e in zip(got, expected)), (got, expected)  # JPEG is lossy


def test_digits_sample_images_are_32x32_grayscale_pngs(run_tloop):
    # Samples at the first step; at the last evaluation, val predictions and
    # the confusion matrix (10x10 cells of 16 pixels).
    ws = run_tloop(
        '[trainer]\nmax_steps = 2\n[task]\nplugin = "digits_cnn"\nnum_images = 4\n'
        '[eval]\ninterval = 2\n[[hooks]]\nplugin = "image_files"\n'
    )
    samples = sorted((ws / "visualizations" / "1" / "samples").glob("*.png"))
    predictions = sorted((ws / "visualizations" / "2" / "predictions").glob("*.png"))
    assert len(samples) == 4 and len(predictions) == 4
    with Image.open(ws / "visualizations" / "2" / "val" / "confusion_matrix.png") as image:
        assert (image.format, image.size, image.mode) == ("PNG", (160, 160), "L")
    for path in samples + predictions:
        with Image.open(path) as image:
            assert (image.format, image.size, image.mode) == ("PNG", (32, 32), "L")
    assert samples[0].name.startswith("0_label")
    assert "_pred" in predictions[0].name
