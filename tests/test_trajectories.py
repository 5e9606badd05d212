"""2-D test functions, optimizer paths from the real optimizer classes, pictures."""

import numpy as np
import pytest

from optkern import trajectories as tr
from optkern.cli import main

SENSIBLE = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "adamax",
            "nadam")


@pytest.mark.parametrize("name", sorted(tr.FUNCTIONS))
def test_gradients_match_finite_differences(name):
    fn = tr.FUNCTIONS[name]
    rng = np.random.default_rng(0)
    h = 1e-6
    for _ in range(5):
        p = np.array([rng.uniform(*fn.xlim), rng.uniform(*fn.ylim)])
        g = fn.grad(p)
        num = np.array([(fn(p[0] + h, p[1]) - fn(p[0] - h, p[1])) / (2 * h),
                        (fn(p[0], p[1] + h) - fn(p[0], p[1] - h)) / (2 * h)])
        np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(tr.FUNCTIONS))
def test_minimum_is_stationary(name):
    fn = tr.FUNCTIONS[name]
    if fn.minimum is None:
        assert fn.grad(np.zeros(2)).tolist() == [0.0, 0.0]  # the saddle point
    else:
        np.testing.assert_allclose(fn.grad(np.array(fn.minimum)), 0.0, atol=1e-12)


@pytest.mark.parametrize("opt", SENSIBLE)
def test_quadratic_paths_reach_the_minimum(opt):
    path = tr.optimizer_path("quadratic", opt)
    assert path.shape == (tr.FUNCTIONS["quadratic"].steps + 1, 2)
    assert path[0].tolist() == list(tr.FUNCTIONS["quadratic"].start)
    assert np.hypot(*path[-1]) < 1e-2, (opt, path[-1])


def test_paths_come_from_the_optimizer_classes():
    # the recorded path is exactly what stepping the optimizer class gives
    import optkern

    fn = tr.FUNCTIONS["quadratic"]
    p = np.array(fn.start)
    opt = optkern.Adam(p, lr=0.2, backend="numpy")
    expected = [p.copy()]
    for _ in range(20):
        opt.step(fn.grad(p))
        expected.append(p.copy())
    path = tr.optimizer_path("quadratic", "adam", lr=0.2, steps=20, backend="numpy")
    np.testing.assert_array_equal(path, np.array(expected))


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam", "rmsprop"])
def test_numba_and_numpy_backends_trace_the_same_path(opt):
    a = tr.optimizer_path("beale", opt, steps=100, backend="numpy")
    b = tr.optimizer_path("beale", opt, steps=100, backend="numba")
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_rosenbrock_and_beale_adam_reach_the_valley_floor():
    for name in ("rosenbrock", "beale"):
        fn = tr.FUNCTIONS[name]
        end = tr.optimizer_path(name, "adam")[-1]
        assert np.hypot(*(end - np.array(fn.minimum))) < 0.1, (name, end)


def test_saddle_paths_escape_and_stop_outside_the_window():
    path = tr.optimizer_path("saddle", "sgd", steps=2000)
    assert len(path) < 2001  # left the window (escape) and stopped
    assert abs(path[-1, 1]) > 10 and np.all(np.isfinite(path))


def test_lr_start_steps_and_params():
    path = tr.optimizer_path("quadratic", "sgd", lr=0.01, steps=5, start=(1.0, 1.0))
    assert path.shape == (6, 2)
    np.testing.assert_allclose(path[1], [1 - 0.01 * 1.0, 1 - 0.01 * 20.0])
    slow = tr.optimizer_path("quadratic", "momentum", steps=3, momentum=0.0, lr=0.01,
                             start=(1.0, 1.0))
    np.testing.assert_allclose(slow[:4], path[:4])


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match="did you mean 'rosenbrock'"):
        tr.optimizer_path("rosenbrok", "adam")
    with pytest.raises(ValueError, match="choose from .*adam.*did you mean 'adam'"):
        tr.optimizer_path("quadratic", "adamm")


def _check_png(path, width, height):
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    assert img.shape[:2] == (height, width)
    rgb = img[..., :3]
    assert rgb.std() > 0.05  # not blank
    colours = np.unique((rgb.reshape(-1, 3) * 255).round().astype(np.uint8), axis=0)
    assert len(colours) > 50
    return rgb


def _has_colour(rgb, colour, tol=0.06):
    return np.any(np.all(np.abs(rgb - np.asarray(colour)) < tol, axis=-1))


def test_plot_paths_draws_each_optimizer_in_its_own_colour(tmp_path):
    names = ["sgd", "momentum", "adam"]
    paths = tr.paths("quadratic", names)
    out = tmp_path / "q.png"
    tr.plot_paths("quadratic", paths, str(out))
    rgb = _check_png(out, 800, 600)
    for colour in tr._palette(3):
        assert _has_colour(rgb, colour), colour


def test_trajectories_command_writes_png(tmp_path, capsys):
    out = tmp_path / "traj.png"
    rc = main(["trajectories", "--function", "rosenbrock", "--optimizers", "sgd", "adam",
               "rmsprop", "--steps", "200", "-o", str(out), "--width", "640", "--height", "480",
               "--dpi", "80"])
    assert rc == 0
    rgb = _check_png(out, 640, 480)
    for colour in tr._palette(3):
        assert _has_colour(rgb, colour)
    text = capsys.readouterr().out
    assert "adam" in text and "rmsprop" in text and "distance to minimum" in text


def test_trajectories_command_animates(tmp_path):
    from PIL import Image

    gif = tmp_path / "traj.gif"
    rc = main(["trajectories", "--optimizers", "sgd", "adam", "--steps", "30", "--animate",
               str(gif), "--frames", "4", "--width", "320", "--height", "240", "--dpi", "40"])
    assert rc == 0
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.size == (320, 240)
        assert im.n_frames >= 3


@pytest.mark.parametrize("fn", sorted(tr.FUNCTIONS))
def test_every_function_plots(tmp_path, fn):
    out = tmp_path / f"{fn}.png"
    assert main(["trajectories", "--function", fn, "--optimizers", "adam", "--steps", "20",
                 "-o", str(out), "--width", "320", "--height", "240", "--dpi", "40"]) == 0
    _check_png(out, 320, 240)


def test_trajectories_command_bad_input(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["trajectories", "--function", "rosenbrok", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'rosenbrock'" in err and "Traceback" not in err
    assert main(["trajectories", "--optimizers", "adamm", "-o", str(out)]) == 2
    assert "did you mean 'adam'" in capsys.readouterr().err
    assert main(["trajectories"]) == 2  # neither -o nor --animate
    assert main(["trajectories", "--animate", str(tmp_path / "x.mp4")]) == 2
    assert "gif" in capsys.readouterr().err
    assert main(["trajectories", "-o", str(tmp_path / "nodir" / "x.png")]) == 2
    assert main(["trajectories", "--lr", "adam=0.1", "--optimizers", "sgd", "-o",
                 str(out)]) == 2
    assert not out.exists()
