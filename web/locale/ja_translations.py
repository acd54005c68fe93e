"""Japanese texts of the web UI, merged into web/locale/ja/LC_MESSAGES/django.po.

    python manage.py makemessages -l ja --ignore=.venv ...   # (see Makefile: messages)
    python web/locale/ja_translations.py                     # fill in msgstr
    python manage.py compilemessages

Kept as a table so that a re-run of makemessages never loses a translation."""

from __future__ import annotations

import re
import sys
from pathlib import Path

JA = {
    "Resume study": "スタディを再開",
    "Resume": "再開",
    "Resumed: finished trials are kept, the others continue from their last checkpoints.":
        "再開しました。終了した試行はそのまま、残りの試行は最後のチェックポイントから続きます。",
    "Theme": "テーマ",
    "Start from": "初期値",
    "Start from earlier studies": "以前のスタディから開始",
    "launch.py --warm-start: their finished trials are given to the searcher; the champion's parameters are tried first.":
        "launch.py --warm-start：終了した試行を探索器に渡します。チャンピオンのパラメータを最初に試します。",
    "the theme's champion": "テーマのチャンピオン",
    "A folder of configs/ whose files fill this form.": "このフォームに読み込む configs/ のフォルダ。",
    "Study name": "スタディ名",
    "Optuna study name (study.name).": "Optuna のスタディ名（study.name）。",
    "Direction": "最適化の方向",
    "maximize": "最大化",
    "minimize": "最小化",
    "Metric": "評価指標",
    "The theme name %(problem)s; rename the theme (admin, Themes) first.":
        "テーマ名が使えません（%(problem)s）。先に管理画面の Themes でテーマ名を変更してください。",
    "Trials": "試行",
    "Number of trials (study.n_trials).": "試行回数（study.n_trials）。",
    "Timeout (s)": "タイムアウト（秒）",
    "Time budget in seconds; empty: none.": "制限時間（秒）。空欄なら制限なし。",
    "Search space": "探索空間",
    "params_to_tune: one entry per parameter, with type float, int or categorical.":
        "params_to_tune：パラメータごとに 1 項目。type は float・int・categorical。",
    "Fixed parameters": "固定パラメータ",
    "base_params: used by every trial; params.yaml overrides them.":
        "base_params：全試行で使う値。params.yaml の値が優先されます。",
    "params.yaml": "params.yaml",
    "Training parameters; they override the fixed parameters, and sampled values override them.":
        "学習パラメータ。固定パラメータより優先され、サンプリングされた値がさらに優先されます。",
    "CPUs per trial": "試行あたりの CPU",
    "GPUs per trial": "試行あたりの GPU",
    "Fractions share a GPU, e.g. 0.25.": "小数で GPU を共有できます（例：0.25）。",
    "Trials at once": "同時実行数",
    "Scheduler": "スケジューラ",
    "none": "なし",
    "ASHA (stops poor trials early)": "ASHA（成績の悪い試行を早期終了）",
    "Grace period (epochs)": "猶予期間（エポック）",
    "ASHA: epochs every trial runs before it may be stopped.":
        "ASHA：打ち切りの対象になる前に各試行が必ず実行するエポック数。",
    "config.yaml (other settings)": "config.yaml（その他の設定）",
    "MLflow, Ray, checkpoints, failures, cache folder.":
        "MLflow、Ray、チェックポイント、失敗時の再試行、キャッシュフォルダ。",
    "augments.yaml": "augments.yaml",
    "Augmentations of training batches.": "学習バッチのデータ拡張。",
    "Optimization history": "最適化履歴",
    "Parameter importance": "パラメータ重要度",
    "Parallel coordinates": "平行座標",
    "Slice": "スライス",
    "English": "英語",
    "Japanese": "日本語",
    "stopping…": "停止中…",
    "%(done)s of %(total)s trials done": "%(total)s 試行中 %(done)s 試行完了",
    "%(n)s running": "%(n)s 実行中",
    "%(n)s pruned": "%(n)s 枝刈り",
    "%(n)s failed or killed": "%(n)s 失敗・中止",
    "Elapsed": "経過時間",
    "Estimated time left": "残り時間（推定）",
    "Starting: preparing data and Ray…": "開始中：データと Ray を準備しています…",
    "Best trial": "最良の試行",
    "Trial": "試行",
    "Registered model": "登録モデル",
    "Download params.yaml": "params.yaml をダウンロード",
    "Save as the theme's defaults": "テーマの既定値として保存",
    "State": "状態",
    "Epochs": "エポック",
    "Duration": "所要時間",
    "Node": "ノード",
    "run": "ラン",
    "No trial has started yet.": "まだ試行は始まっていません。",
    "Name": "名前",
    "Status": "状態",
    "Best": "最良値",
    "Created": "作成日時",
    "No studies yet.": "スタディはまだありません。",
    "Studies": "スタディ",
    "Themes": "テーマ",
    "New study": "新しいスタディ",
    "Ray dashboard": "Ray ダッシュボード",
    "Admin": "管理",
    "Language": "言語",
    "Log out": "ログアウト",
    "Log in": "ログイン",
    "Tune image classifiers for your themes on Ray, with Optuna and MLflow.":
        "テーマごとの画像分類モデルを、Ray 上で Optuna と MLflow を使ってチューニングします。",
    "User name": "ユーザー名",
    "Password": "パスワード",
    "Study %(id)s": "スタディ %(id)s",
    "Stop this study? Its running trials end as killed.":
        "このスタディを停止しますか？実行中の試行は中止として終了します。",
    "Cancel study": "スタディを中止",
    "Log": "ログ",
    "Optuna study": "Optuna スタディ",
    "open in optuna-dashboard": "optuna-dashboard で開く",
    "Runs as": "実行方法",
    "Ray job": "Ray ジョブ",
    "local process": "ローカルプロセス",
    "command line": "コマンドライン",
    "parent run": "親ラン",
    "Plots": "グラフ",
    "Parameter": "パラメータ",
    "Type": "型",
    "Range or choices": "範囲・選択肢",
    "There is no theme to tune yet. Import one with <code>python manage.py import_theme DIR --name NAME</code> (or the demo digits with <code>python manage.py import_demo_theme</code>), then come back.":
        "チューニングできるテーマがまだありません。<code>python manage.py import_theme DIR --name NAME</code>"
        "（デモの数字画像なら <code>python manage.py import_demo_theme</code>）で取り込んでから戻ってください。",
    "The settings have a problem: see the marked field below.":
        "設定に問題があります。下の印の付いた項目を確認してください。",
    "Theme and study": "テーマとスタディ",
    "params.yaml below starts from this theme's saved defaults (best params of study %(id)s).":
        "下の params.yaml は、このテーマに保存された既定値（スタディ %(id)s の最良パラメータ）から始まります。",
    "Search space and parameters": "探索空間とパラメータ",
    "YAML, as in the files of configs/. Each parameter to tune has a <code>type</code> (float, int or categorical) with <code>low</code>/<code>high</code> (and <code>log</code>, <code>step</code>) or <code>choices</code>.":
        "configs/ のファイルと同じ YAML です。チューニングする各パラメータには <code>type</code>"
        "（float・int・categorical）と、<code>low</code>/<code>high</code>（と <code>log</code>・"
        "<code>step</code>）または <code>choices</code> を書きます。",
    "Resources and scheduler": "リソースとスケジューラ",
    "Advanced: config.yaml and augments.yaml": "詳細設定：config.yaml と augments.yaml",
    "Launch study": "スタディを開始",
    "Runs as a Ray job on the configured cluster.": "設定された Ray クラスタでジョブとして実行します。",
    "Runs as a background process on this machine, with a local Ray.":
        "このマシンのバックグラウンドプロセスとして、ローカルの Ray で実行します。",
    "Back to %(name)s #%(id)s": "%(name)s #%(id)s に戻る",
    "The plot could not be loaded.": "グラフを読み込めませんでした。",
    "Tune this theme": "このテーマをチューニング",
    "%(images)s images in %(classes)s classes.": "%(classes)s クラス、%(images)s 枚の画像。",
    "Defaults for the next study": "次のスタディの既定値",
    "Best params of study %(id)s; they prefill params.yaml of a new study.":
        "スタディ %(id)s の最良パラメータです。新しいスタディの params.yaml の初期値になります。",
    "Classes": "クラス",
    "%(counter)s image": "%(counter)s 枚",
    "Studies of this theme": "このテーマのスタディ",
    "A theme is a labelled image set: one folder per class. Import one with <code>python manage.py import_theme DIR --name NAME</code>, or the demo digits with <code>python manage.py import_demo_theme</code>.":
        "テーマはラベル付きの画像セットです（クラスごとに 1 フォルダ）。"
        "<code>python manage.py import_theme DIR --name NAME</code> で取り込むか、デモの数字画像を "
        "<code>python manage.py import_demo_theme</code> で取り込みます。",
    "Images": "画像",
    "Tune": "チューニング",
    "No themes yet.": "テーマはまだありません。",
    "pending": "待機中",
    "running": "実行中",
    "completed": "完了",
    "complete": "完了",
    "failed": "失敗",
    "killed": "中止",
    "pruned": "枝刈り",
    "Load the defaults of this theme and preset? Your edits are lost.":
        "このテーマと初期値の設定を読み込みますか？編集した内容は失われます。",
    "(no output yet)": "（まだ出力はありません）",
    "Study %(id)s launched.": "スタディ %(id)s を開始しました。",
    "Cancel requested: the study stops its trials and ends as killed.":
        "中止を要求しました。スタディは試行を止め、中止として終了します。",
    "The study had already ended.": "スタディはすでに終了しています。",
    "The study has no best params yet.": "このスタディにはまだ最良パラメータがありません。",
    "Saved as the defaults of theme %(theme)s: the next study of this theme starts from them.":
        "テーマ %(theme)s の既定値として保存しました。このテーマの次のスタディはこの値から始まります。",
    "This plot needs at least %(n)s completed trial(s); it appears as soon as they finish.":
        "このグラフには完了した試行が %(n)s 件以上必要です。試行が終わりしだい表示されます。",
    # The study's held-out evaluation and learning curves
    "Learning curves": "学習曲線",
    "Epoch": "エポック",
    "Trial %(n)s": "試行 %(n)s",
    "Trial %(n)s (best)": "試行 %(n)s（最良）",
    "The learning curves appear as soon as a trial reports %(metric)s for an epoch.":
        "学習曲線は、いずれかの試行がエポックの %(metric)s を報告しだい表示されます。",
    "Held-out evaluation": "テストでの評価",
    "The chosen model (trial %(n)s), scored once on the <code>%(split)s</code> split.":
        "選ばれたモデル（試行 %(n)s）を <code>%(split)s</code> 分割で一度だけ評価した結果です。",
    "Confusion matrix": "混同行列",
    "Rows: true class. Columns: predicted class. The shade is the cell's share of its row.":
        "行が正解クラス、列が予測クラスです。色の濃さは、その行に占めるセルの割合です。",
    "true ↓ predicted →": "正解 ↓ 予測 →",
    "Total": "合計",
    "Per class": "クラス別",
    "Class": "クラス",
    "Precision": "適合率",
    "Recall": "再現率",
    "Support": "件数",
    "Misclassified test images": "誤分類されたテスト画像",
    "Not an image of this theme: not shown.": "このテーマの画像ではないため表示しません。",
    "true": "正解",
    "predicted": "予測",
    "No misclassified test image was recorded.": "誤分類されたテスト画像は記録されていません。",
    "The recorded evaluation cannot be read: it was written in another shape.":
        "記録された評価を読み込めません。別の形式で書かれています。",
    "The confusion matrix, the per-class figures and the misclassified test images appear here when the study has finished, from its best trial's model.":
        "混同行列、クラス別の指標、誤分類されたテスト画像は、スタディが終わると最良の試行の"
        "モデルからここに表示されます。",
    "No held-out evaluation was recorded for this study: it is written when a study ends with a best trial.":
        "このスタディにはテストでの評価が記録されていません。評価は、最良の試行があるスタディが"
        "終わったときに書かれます。",
    # Try the model
    "Try the model": "モデルを試す",
    "Label your own images with this theme's champion model, %(uri)s.":
        "このテーマのチャンピオンモデル（%(uri)s）で手元の画像を判定します。",
    "No model yet: a study of this theme registers one when it completes.":
        "まだモデルがありません。このテーマのスタディが完了するとモデルが登録されます。",
    "No model yet: %(uri)s is not in this MLflow store. A study of this theme registers "
    "its best model there when it completes.":
        "まだモデルがありません。%(uri)s はこの MLflow ストアにありません。このテーマの"
        "スタディが完了すると、最良のモデルがここに登録されます。",
    "Label the images": "画像を判定",
    "Up to %(n)s images at a time, %(mb)s MB and %(mp)s megapixels each, %(total)s "
    "megapixels in all (PNG, JPEG, BMP, GIF, TIFF, WebP). Nothing is saved.":
        "一度に %(n)s 枚まで、1 枚 %(mb)s MB・%(mp)s メガピクセルまで、合計 %(total)s "
        "メガピクセルまで（PNG・JPEG・BMP・GIF・TIFF・WebP）。画像はどこにも保存されません。",
    "more than %(mp)s megapixels, the most one image may have":
        "1 枚の上限 %(mp)s メガピクセルを超えています",
    "%(width)s × %(height)s pixels: more than %(mp)s megapixels, the most one image may have":
        "%(width)s × %(height)s ピクセル: 1 枚の上限 %(mp)s メガピクセルを超えています",
    "not labelled: the images of one request may hold %(mp)s megapixels in all; send this "
    "one again on its own":
        "判定していません: 1 回に送れる画像は合計 %(mp)s メガピクセルまでです。"
        "この画像は単独でもう一度送ってください",
    "Model": "モデル",
    "Version": "バージョン",
    "MLflow store": "MLflow ストア",
    "Study": "スタディ",
    "Labels": "判定結果",
    "Preview": "プレビュー",
    "File": "ファイル",
    "Predicted class": "予測クラス",
    "Probability": "確率",
    "Top %(n)s classes": "上位 %(n)s クラス",
    "Label more images": "ほかの画像を判定",
    "Label images with the champion": "チャンピオンモデルで画像を判定",
    "not an image file": "画像ファイルではありません",
    "larger than %(mb)s MB": "%(mb)s MB を超えています",
    "Choose one or more image files.": "画像ファイルを 1 つ以上選んでください。",
    "At most %(n)s images at a time: the first %(n)s are labelled, the others were not read.":
        "一度に扱える画像は %(n)s 枚までです。最初の %(n)s 枚を判定し、残りは読み込んでいません。",
    "Too many failed logins": "ログインの失敗が多すぎます",
    "This user name has been locked out from your address after %(limit)s failed login.":
        "このアドレスからのこのユーザー名のログインは、%(limit)s 回失敗したためロックされています。",
    "Wait for the lock to end and try again, or ask an administrator to unlock it "
    "(manage.py axes_reset_username).":
        "ロックが解けるのを待ってから再度お試しいただくか、管理者に解除を依頼してください"
        "（manage.py axes_reset_username）。",
    "Back to the login page": "ログインページに戻る",
    # The settings screen: the search space rows and the fixed parameters (issue 19).
    "Passes over the training split per trial.": "試行ごとに学習データを何周するか。",
    "Image size (px)": "画像サイズ（px）",
    "Images are resized to this square side.": "画像はこの一辺の正方形に縮小・拡大されます。",
    "Channels": "チャンネル数",
    "3 (colour)": "3（カラー）",
    "1 (grayscale)": "1（グレースケール）",
    "Train share": "学習の割合",
    "Share of source images for training.": "元画像のうち学習に使う割合。",
    "Validation share": "検証の割合",
    "The three shares sum to 1.": "3 つの割合の合計は 1 です。",
    "Test share": "テストの割合",
    "Held out: the figures of the chosen model.": "選ばれたモデルの評価に取っておく分。",
    "Seed": "シード",
    "Histogram equalization": "ヒストグラム平坦化",
    "Evens out the brightness of each image.": "各画像の明るさをならします。",
    "Patches": "パッチ",
    "Train on square patches of each image.": "各画像から切り出した正方形のパッチで学習します。",
    "Patch size (px)": "パッチサイズ（px）",
    "At most the image size.": "画像サイズ以下。",
    "Patch stride (px)": "パッチの間隔（px）",
    "Empty: the patch size.": "空欄ならパッチサイズと同じ。",
    "Pretrained weights": "事前学習済みの重み",
    "Start from torchvision's ImageNet weights (the local torch hub cache).":
        "torchvision の ImageNet 学習済みの重み（ローカルの torch hub キャッシュ）から始めます。",
    "Other fixed parameters (base_params)": "その他の固定パラメータ（base_params）",
    "YAML: used by every trial; params.yaml and the fields above override them.":
        "YAML：全試行で使う値。params.yaml と上の入力欄の値が優先されます。",
    "params.yaml (other training parameters)": "params.yaml（その他の学習パラメータ）",
    "YAML: they override base_params; the fields above and sampled values override them.":
        "YAML：base_params より優先され、上の入力欄とサンプリングされた値がさらに優先されます。",
    "text": "文字列",
    "integer": "整数",
    "number": "数値",
    "or null": "または null",
    "Low": "下限",
    "High": "上限",
    "Log scale": "対数スケール",
    "Step": "刻み",
    "Choices": "選択肢",
    "One per line, or separated by commas; quote text that holds a comma.":
        "1 行に 1 つ、またはカンマ区切り。カンマを含む文字列は引用符で囲みます。",
    "Network architecture (torchvision ResNet).": "ネットワークの構造（torchvision の ResNet）。",
    "A local state_dict file to start from.": "初期値にするローカルの state_dict ファイル。",
    "Start from torchvision's ImageNet weights (local torch hub cache).":
        "torchvision の ImageNet 学習済みの重み（ローカルの torch hub キャッシュ）から始めます。",
    "Train only the classifier; the backbone stays as loaded.":
        "分類層だけを学習し、バックボーンは読み込んだままにします。",
    "Optimizer step size.": "オプティマイザの学習率（1 ステップの大きさ）。",
    "Images per training batch.": "学習バッチあたりの画像数。",
    "Optimizer.": "オプティマイザ。",
    "Passes over the training split.": "学習データを何周するか。",
    "Data loader worker processes (streaming data).": "データローダーのワーカープロセス数（ストリーミング時）。",
    "SGD momentum.": "SGD のモーメンタム。",
    "L2 penalty on the weights.": "重みへの L2 正則化。",
    "At most this many batches per epoch; empty: the whole split.":
        "1 エポックあたりの最大バッチ数。空欄なら学習データ全体。",
    "Share of source images in the training split.": "元画像のうち学習データに入る割合。",
    "Share of source images in the validation split.": "元画像のうち検証データに入る割合。",
    "Share of source images in the test split.": "元画像のうちテストデータに入る割合。",
    "Seed of the split and of training.": "データ分割と学習の乱数シード。",
    "Side of the square input image, in pixels.": "正方形の入力画像の一辺（ピクセル）。",
    "1 (grayscale) or 3 (colour) input channels.": "入力チャンネル数：1（グレースケール）または 3（カラー）。",
    "Skip images that cannot be decoded instead of failing.": "読めない画像があっても失敗せずに飛ばします。",
    "Keep decoded images in memory (resident) or stream shards; auto picks.":
        "デコードした画像をメモリに置く（resident）か、シャードから読む（streaming）か。auto なら自動で選びます。",
    "Histogram equalization of each image.": "各画像のヒストグラム平坦化。",
    "Brightness correction method.": "明るさ補正の方法。",
    "Train on square patches cut from each image.": "各画像から切り出した正方形のパッチで学習します。",
    "Patch side in pixels, at most the image size.": "パッチの一辺（ピクセル）。画像サイズ以下。",
    "Step between patches in pixels; empty: the patch size.": "パッチの間隔（ピクセル）。空欄ならパッチサイズと同じ。",
    "Accepts:": "受け付ける値：",
    "Remove": "削除",
    "One row per parameter to tune: float and int take a range (<code>low</code>, "
    "<code>high</code>, and <code>log</code> or <code>step</code>), categorical a list of "
    "choices. Each row is checked as <code>launch.py</code> checks "
    "<code>params_to_tune</code>.":
        "探索するパラメータごとに 1 行。float と int は範囲（<code>low</code>、<code>high</code>、"
        "<code>log</code> または <code>step</code>）、categorical は選択肢のリストを指定します。"
        "各行は <code>launch.py</code> が <code>params_to_tune</code> を確認するのと同じ規則で確認されます。",
    "Add a parameter": "パラメータを追加",
    "Add row": "行を追加",
    "Removed rows go when you add a row or launch.": "削除した行は、行の追加時または起動時に消えます。",
    "The keys you can tune, and the values each accepts": "探索できるキーと、それぞれが受け付ける値",
    "Description": "説明",
    "Accepts": "受け付ける値",
    "Used by every trial; a parameter in the search space is sampled instead.":
        "全試行で使う値。探索空間にあるパラメータはサンプリングされた値が使われます。",
    "Advanced: everything else, as YAML": "詳細設定：その他すべて（YAML）",
    "The keys without a field above, as in the files of configs/. A key set here and in a "
    "field above takes the field's value.":
        "上に入力欄のないキーを configs/ のファイルと同じ形式で書きます。ここと上の入力欄の両方にあるキーは入力欄の値が使われます。",
    "The parameters below start from this theme's saved defaults (best params of study "
    "%(id)s).":
        "以下のパラメータは、このテーマに保存された既定値（スタディ %(id)s の最良パラメータ）から始まります。",
    "As searched by study %(id)s, the latest of this theme.": "このテーマの最新のスタディ %(id)s の探索空間。",
    "No study of this theme yet: the default search space of configs/.":
        "このテーマのスタディはまだありません。configs/ の既定の探索空間です。",
}


def _unquote(lines: list[str]) -> str:
    return "".join(re.match(r'^(?:msgid(?:_plural)? |msgstr(?:\[\d\])? )?"(.*)"$', line).group(1)
                   .encode().decode("unicode_escape").encode("latin-1").decode("utf-8")
                   for line in lines)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unfuzzy(line: str) -> str:
    return line.replace("#, fuzzy, ", "#, ") if line.startswith("#, fuzzy, ") else line


def fill(po_path: Path) -> list[str]:
    """Set every msgstr from JA; returns the msgids left untranslated."""
    blocks = po_path.read_text(encoding="utf-8").split("\n\n")
    missing = []
    out = []
    for block in blocks:
        lines = block.split("\n")
        starts = [i for i, line in enumerate(lines) if line.startswith("msgid ")]
        if not starts:
            out.append(block)
            continue
        i = starts[0]
        j = i + 1
        while j < len(lines) and lines[j].startswith('"'):
            j += 1
        msgid = _unquote(lines[i:j])
        if not msgid:  # the header
            header = block.replace("#, fuzzy\n", "").replace('"Language: \\n"',
                                                               '"Language: ja\\n"')
            header = header.replace("# SOME DESCRIPTIVE TITLE.", "# themetune web UI: Japanese.")
            out.append(header)
            continue
        # makemessages marks a changed msgid fuzzy (compilemessages then leaves it out)
        # and keeps the old one in "#|" lines: the table's text is the translation.
        head = [_unfuzzy(line) for line in lines[:i] if line != "#, fuzzy" and not line.startswith("#|")]
        plural = j < len(lines) and lines[j].startswith("msgid_plural")
        text = JA.get(msgid)
        if text is None:
            missing.append(msgid)
            out.append(block)
            continue
        if plural:
            k = j + 1
            while k < len(lines) and lines[k].startswith('"'):
                k += 1
            body = lines[i:k] + [f"msgstr[0] {_quote(text)}"]
        else:
            body = lines[i:j] + [f"msgstr {_quote(text)}"]
        out.append("\n".join(head + body))
    po_path.write_text("\n\n".join(out), encoding="utf-8")
    return missing


if __name__ == "__main__":
    left = fill(Path(__file__).resolve().parent / "ja" / "LC_MESSAGES" / "django.po")
    for msgid in left:
        print(f"untranslated: {msgid!r}", file=sys.stderr)
    sys.exit(1 if left else 0)
