"""Every sentence the bot says, in one place (plain text: no parse mode, nothing to escape)."""

from __future__ import annotations

from nst_daemon import style_catalog
from nst_daemon.config import Settings
from nst_daemon.style_names import normalize_style as normalize_style  # the routers read it here
from nst_daemon.wording import plural as plural  # the routers read it here, beside the sentences

NST_NAME = "Multi-style NST"
NST_LINE = "your own style images (one or more) painted onto your photo; slower, see /nst"
PRESETS = ("fast", "balanced", "best")
# The engines for one's own style images, as the /nst flow and /settings name them.
ENGINE_NAMES = {"adain": "Instant", "nst": "Painted (slower, finer)"}

COMMANDS = {
    "start": "Welcome and style buttons",
    "help": "How to use the bot",
    "styles": "The styles, one line each",
    "nst": "Multi-style transfer with your own style images",
    "go": "Start the multi-style transfer",
    "cancel": "Leave the current step, or stop your job",
    "status": "Your jobs, queue position and progress",
    "settings": "Quality, strength, Instant or Painted, colour options",
    "savestyle": "Save your own style images under a name: /savestyle NAME",
}


# The pretrained styles, their names and lines are the catalog's (style_catalog.py; models/catalog.toml).


def style_name(style: str, settings: Settings | None = None) -> str:
    return style_catalog.style_label(style, settings)


def styles_inline(settings: Settings | None = None) -> str:
    return ", ".join(style_catalog.style_keys(settings))


def welcome(default_style: str) -> str:
    quick = (
        f"Send a photo and I'll paint it in the {style_name(default_style)} style right away."
        if default_style
        else "Send a photo and pick a style with the buttons."
    )
    return (
        "Hi! I turn photos into paintings.\n\n"
        f"{quick} Put a style name in the caption (for example: monet) to choose it directly, "
        "or pick a style below first and then send the photo.\n\n"
        "/nst paints your photo in the style of your own pictures. /help for everything else."
    )


def help_text(default_style: str) -> str:
    default = (
        f"A photo without a caption gets the default style, {style_name(default_style)}."
        if default_style
        else "A photo without a caption: I ask which style you want."
    )
    return (
        "How to use me\n\n"
        f"• Send a photo with a style name as its caption ({styles_inline()}): it is stylized at once.\n"
        f"• {default}\n"
        "• Files work too: send an image as a file (uncompressed) and it is used as is, up to 20 MB.\n"
        "• /nst: send a content photo, then one or more style images (an album counts as several), "
        "then press Instant or Painted (or send /go for the one you chose last).\n"
        "• Weights: a style image captioned with a number (2, or x2) counts that many times in the blend.\n"
        "• /savestyle NAME, then style images: your own style, used by putting NAME in a caption.\n"
        "• /settings: strength (how much of the style), Instant or Painted, quality, colours.\n\n"
        "Commands\n"
        + "\n".join(f"/{command} - {line}" for command, line in COMMANDS.items())
        + "\n\nWhile a job runs you get one status message that shows its place in the queue and its "
        "progress; the result arrives as a new message."
    )


def styles_text(settings: Settings | None = None, named: list[tuple[str, str]] | tuple[()] = ()) -> str:
    """`named`: (name, engine) of the named styles the user may use, listed after the built-ins."""
    styles = style_catalog.pretrained_styles(settings).values()
    lines = [f"• {style.key} ({style.label}): {style.description}" for style in styles]
    lines += [f"• {name}: named style ({ENGINE_NAMES.get(engine, engine)})" for name, engine in named]
    lines.append(f"• /nst ({NST_NAME}): {NST_LINE}")
    return "Styles (put the name in a photo's caption, or use the buttons):\n\n" + "\n".join(lines)


STYLE_SHEET_CAPTION = "Every style on one photo: put a style's name in a caption, or use the buttons above."
NO_STYLE_SHEET = "(The picture of every style could not be drawn just now; the list above is complete.)"

# --- quick path and flows ---

CHOOSE_STYLE = "Which style? Pick one (or Multi-style NST to use your own style images)."
CHOOSE_STYLE_ALBUM = "Which style for these {count} photos? Pick one."
STYLE_CHOSEN_SEND_PHOTO = "{style} it is. Now send a photo (or an image file)."
PRESS_A_BUTTON = "Pick a style with the buttons above, or send /cancel."
SEND_PHOTO_FOR_STYLE = "Send a photo to paint in the {style} style, or /cancel."
CHOSEN = "Style: {style}."

NST_START = "Multi-style NST. Step 1 of 2: send the content photo (the picture to repaint)."
NST_GOT_CONTENT = (
    "Got the content photo. Step 2 of 2: send one or more style images (an album counts as several), "
    "then press Instant or Painted (or /go)."
)
NST_GOT_STYLES = "Got {count} style image{s}{weights}. Send more, or press Instant or Painted (or /go)."
NST_WEIGHTS = " (weights {weights})"
NST_TOO_MANY = "That's the limit of {limit} style images. Press Instant or Painted (or /go) to start."
BAD_WEIGHT = (
    'A style image\'s caption is its weight, a number from 0.1 to 100 such as 2 or x2; "{caption}" '
    "is not one. Send the image again."
)
NST_NEED_CONTENT = "Send the content photo first (the picture to repaint), or /cancel."
NST_NEED_STYLE = "Send at least one style image first, then press Instant or Painted (or /go)."
NST_NOT_IN_FLOW = "There is nothing to stylize yet: start with /nst."
NST_BAD_CONTENT = "Send /nst to start again with another content photo."
NST_BAD_STYLE_DROPPED = "I dropped that style image: send another one, or press Instant or Painted (or /go)."
NST_WAITING_STYLES = (
    "Send style images (photos or image files), then press Instant or Painted (or /go). /cancel leaves."
)

ALREADY_IN_FLOW = "You are in the middle of {what}. Carry on, or send /cancel to start over."
FLOW_NAMES = {
    "Nst:content": "a multi-style NST (waiting for the content photo)",
    "Nst:styles": "a multi-style NST (waiting for style images)",
    "Quick:choosing_style": "choosing a style for your photo",
    "Quick:waiting_photo": "a stylization (waiting for your photo)",
    "SaveStyle:images": "saving a style (waiting for its images)",
    "SaveStyle:naming": "saving a style (waiting for its name)",
}

# --- named styles ---

SAVE_AS_STYLE_BUTTON = "Save as style…"
SAVESTYLE_USAGE = "Send /savestyle NAME, then the style images: NAME becomes your own style."
SAVESTYLE_SEND_IMAGES = (
    'Send the style image(s) for "{name}" (an album counts as several; a number as caption is a weight), '
    "then press Save style or send /done."
)
SAVESTYLE_GOT = 'Got {count} image{s}{weights} for "{name}". Send more, or press Save style (or /done).'
SAVESTYLE_ASK_NAME = "What name for this style? Send one word (letters and digits)."
SAVESTYLE_NEED_IMAGE = "Send at least one style image first, then press Save style or /done."
SAVESTYLE_NOT_IN_FLOW = "Nothing to save: send /savestyle NAME first."
SAVED_STYLE = (
    'Saved your style "{name}" ({engine}, {count} image{s}). Put {name} in a photo\'s caption to use it; '
    "only you can."
)
STYLE_REFUSED = "Can't save that style: {reason}."

# --- jobs ---

STATUS_RECEIVED = "{label}: got it, preparing…"
STATUS_QUEUED = "{label}: queued, position {position} of {total}."
STATUS_RUNNING = "{label}: stylizing… {percent}%{eta}"
TIME_LEFT = ", about {left} left"
STATUS_DONE = "{label}: done in {seconds} on {device}."
STATUS_FAILED = "{label}: failed."
STATUS_CANCELLED = "{label}: cancelled."
RESULT_CAPTION = "{label} · {seconds} on {device}\nSend a new image to start again."
JOB_FAILED = "Sorry, that didn't work: {error}.\nSend a new image to try again."
JOB_MODEL_MISSING = (
    "Sorry, the {label} style isn't available on this server yet: its model ({model}) is not installed. "
    "Please ask the bot's owner to run `nstd models pull {model}`."
)
JOB_FAILED_REPEATEDLY = (
    "Sorry, that job failed repeatedly (the server was interrupted while working on it). "
    "Send the image again to retry."
)
JOB_CANCELLED = "Job #{job} cancelled. Send a new image to start again."

BUSY = "Busy: {reason}."
SLOW_DOWN = "Slow down, please: at most {limit} images a minute. Try again in {wait} s."
# Reasons a photo could not be taken (bot/failures.py); shown after "{label}: " or "that didn't go through: ".
OUT_OF_SPACE = "the server is out of disk space; try again later"
SERVER_BUSY = "the server is busy; please send it again in a minute"
TELEGRAM_FLOOD = "Telegram asked the bot to slow down; please send it again in a minute"
TELEGRAM_TROUBLE = "Telegram refused a request of the bot; please send it again"
INTAKE_FAILED = "something went wrong on the server; please send it again"
GAVE_UP = "Sorry, the server stopped several times while taking that message. Please send it again."
SHUTTING_DOWN = "The bot is restarting; please send that again in a minute."

# --- input errors ---

UNSUPPORTED = "I can only work with images: send a photo or an image file."
NOT_AN_IMAGE = "That file is not an image ({mime}). Send a photo or an image file (JPEG, PNG, WebP…)."
TOO_BIG = (
    "That file is too big ({size}): bots can download files up to 20 MB. "
    "Send a smaller file, or send it as a photo so Telegram compresses it."
)
DOWNLOAD_FAILED = "I couldn't download your image from Telegram. Please send it again."
UNKNOWN_STYLE = 'I don\'t know the style "{style}". Styles: {styles}. Or send the photo without a caption.'
UNKNOWN_COMMAND = "I don't know that command. /help lists what I can do."
IDLE_HINT = "Send me a photo to stylize (or /help)."
JOB_IN_PROGRESS = "Your image is being stylized ({summary}). Wait for the result, see /status, or /cancel."

# --- cancel and status ---

LEFT_FLOW = "OK, cancelled {what}."
STILL_RUNNING = "You still have {count} job{s} in progress: send /cancel again to stop {them}."
NOTHING_TO_CANCEL = "Nothing to cancel. Send a photo to start."
CANCEL_QUEUED = "Cancelled job #{job} ({label})."
CANCEL_RUNNING = "Stopping job #{job} ({label})…"
CANCEL_NOT_FOUND = "Job #{job} is not one of your jobs in progress."
CANCEL_BUTTON = "Cancel"
NO_JOBS = "You have no jobs. Send a photo to start."
STATUS_HEADER = "Your jobs:"
RECENT_HEADER = "Recent:"

# --- settings ---

SETTINGS = (
    "Your settings\n\n"
    "Your own style images: {engine} (Instant takes seconds; Painted is slower and finer)\n"
    "Strength: {strength}% (how much of the style; lower keeps more of your photo)\n"
    "Quality (painted NST): {preset} (fast is quickest, best is slowest and finest)\n"
    "Preserve colours: {colors} (keep your photo's colours, take only the style's texture)\n"
    "Live preview: {preview} (multi-style NST: the status shows the picture as it forms)"
)
SETTINGS_SAVED = "Saved"

# --- access ---

NOT_ALLOWED = (
    "Sorry, this is a private bot. Your Telegram user id is {user_id}.\n"
    "If you know the owner, ask them to allow you with:\nnstd users add {user_id}"
)
NOT_ALLOWED_SHORT = "This is a private bot."


def human_size(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"
