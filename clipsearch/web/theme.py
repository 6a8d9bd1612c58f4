"""The page's look in one place: Gradio's Soft theme with WCAG AA contrast, the layout CSS and a visible focus ring."""

from __future__ import annotations

import gradio as gr

# Soft draws field labels and the Search button in indigo-500 (#6366f1): 3.6:1 on the labels' indigo-100 and 4.5:1
# under white button text, and grey-400 secondary text (the slider's 50) at 2.5:1, all below WCAG AA's 4.5:1 for
# text this size (axe's color-contrast, docs/decisions/0032). One shade darker each keeps the look and passes.
THEME = gr.themes.Soft().set(
    block_label_text_color="*primary_700",  # 6.4:1 on primary_100
    block_title_text_color="*primary_700",
    button_primary_background_fill="*primary_600",  # white text 6.3:1
    button_primary_background_fill_hover="*primary_700",  # Soft lightens on hover (primary_400); darken instead
    button_primary_border_color="*primary_600",
    button_primary_border_color_hover="*primary_700",
    body_text_color_subdued="*neutral_500",  # 4.8:1 on white
    checkbox_label_background_fill_selected="*primary_600",  # a chosen radio option ("Things in pictures"): white
)                                                            # text 6.3:1 (Soft's primary_500: 4.46:1, below AA)

CSS = """
#results .caption-label {font-size: 0.8rem;}
#results .grid-wrap {min-height: 0; max-height: none;}  /* Gradio reserves 450px even for one row of results */
#details {min-height: 2rem;}
/* A search still running after 400 ms (web.ui.BUSY adds `searching` then) shows a thin bar moving over the results:
   a compositor-only animation. */
#results {position: relative;}
#results.searching::after {content: ""; position: absolute; top: 0; left: 0; width: 25%; height: 3px; z-index: 3;
  background: var(--color-accent, #4f46e5); pointer-events: none; animation: clip-busy 1.2s ease-in-out infinite;}
@keyframes clip-busy { from {transform: translateX(0);} to {transform: translateX(300%);} }
@media (prefers-reduced-motion: reduce) { #results.searching::after {width: 100%; animation: none;} }
footer {display: none !important;}
@media (max-width: 640px) { #results .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; } }
/* On a phone the examples scroll sideways in one row instead of stacking six rows above the results. */
@media (max-width: 640px) {
  #text-examples .gallery { flex-wrap: nowrap; overflow-x: auto; }
  #text-examples .gallery-item { flex: 0 0 auto; }
}
/* The region drawn over the picture (static/region.js): placed over the painted picture, never in a tap's way. */
#query-picture {position: relative;}
#query-picture > svg.region-drawing {position: absolute; pointer-events: none; overflow: visible; z-index: 2;}
/* Keyboard users see where they are: one ring on whatever has keyboard focus (Gradio removes the outline on
   several controls, the results' thumbnails among them). */
.gradio-container :focus-visible { outline: 3px solid var(--color-accent, #4f46e5) !important; outline-offset: 2px; }
/* Code in the About tab: Prism's light colours for strings, comments, functions and punctuation are 2-4:1 on the
   code background; the same hues, darker, reach 4.8:1 or more. (Dark mode keeps Gradio's own colours.) */
body:not(.dark) .md .token.string, body:not(.dark) .md .token.char, body:not(.dark) .md .token.builtin,
body:not(.dark) .md .token.inserted, body:not(.dark) .md .token.selector,
body:not(.dark) .md .token.attr-name {color: #3d6b00;}
body:not(.dark) .md .token.comment, body:not(.dark) .md .token.prolog, body:not(.dark) .md .token.cdata,
body:not(.dark) .md .token.doctype {color: #5a6774;}
body:not(.dark) .md .token.punctuation {color: #6b6b6b;}
body:not(.dark) .md .token.function, body:not(.dark) .md .token.class-name {color: #b3204a;}
body:not(.dark) .md .token.regex, body:not(.dark) .md .token.important,
body:not(.dark) .md .token.variable {color: #9a5200;}
body:not(.dark) .md .token.atrule, body:not(.dark) .md .token.attr-value,
body:not(.dark) .md .token.keyword {color: #006c9e;}
"""

# The Map tab's canvas and its bar (clipsearch.web.atlas, static/atlas.js): 44 px buttons for fingers.
ATLAS_CSS = """
#atlas .atlas canvas {width: 100%; height: 560px; display: block; touch-action: none; cursor: grab;
  border-radius: 8px; background: #fafafa; border: 1px solid #d0d0d0;}
#atlas .atlas-bar {display: flex; gap: .5rem; align-items: center; margin-bottom: .4rem;}
#atlas .atlas-bar button {min-width: 2.75rem; min-height: 2.75rem; padding: 0 .75rem; border: 1px solid #767676;
  border-radius: 6px;
  background: #fff; color: #1a1a1a; font-size: 1rem;}
#atlas .atlas-legend {display: flex; flex-wrap: wrap; gap: .25rem 1rem; list-style: none; padding: 0;
  margin: .4rem 0 0; font-size: .85rem;}
#atlas .atlas-swatch {display: inline-block; width: .8rem; height: .8rem; border-radius: 50%; margin-right: .3rem;}
@media (max-width: 640px) { #atlas .atlas canvas {height: 62vh;} }
"""
