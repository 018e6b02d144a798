from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth import views as auth_views
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.client_ip import client_ip_address
from accounts.forms import (
    ApiKeyCreateForm,
    InvitationCreateForm,
    InvitationNewAccountForm,
    MemberRolesForm,
    TeamCreateForm,
)
from accounts.invitations import invitation_accept, invitation_accept_new_user, invitation_create, invitation_revoke
from accounts.models import ApiKey, Invitation, Membership
from accounts.permissions import role_required
from accounts.roles import Role
from accounts.selectors import (
    SESSION_ORGANISATION_KEY,
    api_key_get,
    api_keys_list,
    invitation_get,
    invitation_pending_get,
    invitations_pending,
    members_list,
    membership_get,
    memberships_for_user,
    teams_list,
)
from accounts.services import (
    api_key_create,
    api_key_revoke,
    membership_remove,
    membership_roles_change,
    team_create,
    user_login_record,
)
from core.errors import ApplicationError


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def form_valid(self, form):
        response = super().form_valid(form)
        user_login_record(user=form.get_user(), ip_address=client_ip_address(self.request))
        return response


logout_view = auth_views.LogoutView.as_view()


@require_POST
@role_required(allow_without_roles=True)
def organisation_switch(request):
    wanted = request.POST.get("organisation_id", "")
    if wanted.isdigit() and memberships_for_user(user=request.user).filter(organisation_id=int(wanted)).exists():
        request.session[SESSION_ORGANISATION_KEY] = int(wanted)
    return redirect("core:home")


def _form_error(form, exc: ApplicationError) -> None:
    field = exc.param if exc.param in form.fields else None
    form.add_error(field, exc.message)


# --- API keys ------------------------------------------------------------------------------


@require_GET
@role_required(Role.ADMIN)
def api_key_list(request):
    keys = api_keys_list(organisation=request.org.organisation)
    return render(request, "accounts/api_key_list.html", {"keys": keys})


@never_cache
@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def api_key_create_view(request):
    """The secret is rendered in the POST response only: nothing can show it again later."""
    organisation = request.org.organisation
    form = ApiKeyCreateForm(request.POST if request.method == "POST" else None, organisation=organisation)
    if request.method == "POST" and form.is_valid():
        try:
            created = api_key_create(
                organisation=organisation, actor=request.org.actor, created_by=request.user, **form.cleaned_data
            )
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            return render(request, "accounts/api_key_created.html", {"key": created.api_key, "secret": created.secret})
    return render(request, "accounts/api_key_form.html", {"form": form})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def api_key_revoke_view(request, key_id: int):
    try:
        key = api_key_get(organisation=request.org.organisation, key_id=key_id)
    except ApiKey.DoesNotExist:
        raise Http404 from None
    if request.method == "POST":
        api_key_revoke(api_key=key, actor=request.org.actor)
        messages.success(
            request, f"API key {key.name} ({key.prefix}…) revoked. It stops working everywhere within 2 seconds."
        )
        return redirect("accounts:api_key_list")
    return render(request, "accounts/api_key_revoke.html", {"key": key})


# --- members and teams ---------------------------------------------------------------------


@never_cache
@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def member_list(request):
    """Members, pending invitations, and the invitation form. The link of a new invitation is rendered
    in the POST response only (the same page whether or not such a user exists)."""
    organisation = request.org.organisation
    form = InvitationCreateForm(request.POST if request.method == "POST" else None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            created = invitation_create(
                organisation=organisation, actor=request.org.actor, invited_by=request.user, **form.cleaned_data
            )
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            form = InvitationCreateForm()
    members = members_list(organisation=organisation).prefetch_related("teams")
    context = {
        "members": members,
        "invitations": invitations_pending(organisation=organisation),
        "form": form,
        "created": created,
        "roles": Role,
    }
    return render(request, "accounts/member_list.html", context)


@require_POST
@role_required(Role.ADMIN)
def member_remove(request, membership_id: int):
    try:
        membership = membership_get(organisation=request.org.organisation, membership_id=membership_id)
    except Membership.DoesNotExist:
        raise Http404 from None
    try:
        membership_remove(membership=membership, actor=request.org.actor)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"{membership.user.get_username()} removed from the organisation.")
    return redirect("accounts:member_list")


@require_POST
@role_required(Role.ADMIN)
def invitation_revoke_view(request, invitation_id: int):
    try:
        invitation = invitation_get(organisation=request.org.organisation, invitation_id=invitation_id)
    except Invitation.DoesNotExist:
        raise Http404 from None
    invitation_revoke(invitation=invitation, actor=request.org.actor)
    messages.success(request, f"Invitation of {invitation.recipient} withdrawn.")
    return redirect("accounts:member_list")


@never_cache
@require_http_methods(["GET", "POST"])
def invitation_accept_view(request, token: str):
    """The invited person's page (no sign-in needed to open it). Signed in, they accept as themselves;
    otherwise they sign in first or create an account, which joins the organisation at once."""
    invitation = invitation_pending_get(token=token)
    if invitation is None:
        return render(request, "accounts/invitation_invalid.html", status=404)
    form = InvitationNewAccountForm(
        request.POST if request.method == "POST" and not request.user.is_authenticated else None
    )
    if request.method == "POST":
        try:
            if request.user.is_authenticated:
                membership = invitation_accept(token=token, user=request.user)
            elif form.is_valid():
                data = form.cleaned_data
                membership = invitation_accept_new_user(
                    token=token, username=data["username"], password=data["password"], email=data["email"]
                )
                auth_login(request, membership.user, backend="django.contrib.auth.backends.ModelBackend")
                user_login_record(user=membership.user, ip_address=client_ip_address(request))
            else:
                membership = None
        except ApplicationError as exc:
            if request.user.is_authenticated:
                messages.error(request, exc.message)
            else:
                _form_error(form, exc)
        else:
            if membership is not None:
                request.session[SESSION_ORGANISATION_KEY] = membership.organisation_id
                messages.success(request, f"Welcome to {membership.organisation.name}.")
                return redirect("core:home")
    return render(request, "accounts/invitation_accept.html", {"invitation": invitation, "form": form})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def member_edit(request, membership_id: int):
    try:
        membership = membership_get(organisation=request.org.organisation, membership_id=membership_id)
    except Membership.DoesNotExist:
        raise Http404 from None
    form = MemberRolesForm(request.POST if request.method == "POST" else None, initial={"roles": membership.roles})
    if request.method == "POST" and form.is_valid():
        try:
            membership_roles_change(membership=membership, roles=form.cleaned_data["roles"], actor=request.org.actor)
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, f"Roles of {membership.user.get_username()} saved.")
            return redirect("accounts:member_list")
    return render(request, "accounts/member_edit.html", {"membership": membership, "form": form})


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def team_list(request):
    organisation = request.org.organisation
    form = TeamCreateForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            team = team_create(organisation=organisation, name=form.cleaned_data["name"], actor=request.org.actor)
        except ApplicationError as exc:
            _form_error(form, exc)
        else:
            messages.success(request, f"Team {team.name} created.")
            return redirect("accounts:team_list")
    return render(request, "accounts/team_list.html", {"teams": teams_list(organisation=organisation), "form": form})


@role_required()
def coming(request, *, title: str):
    """Placeholder page for sections a later release fills in (members only, like the real pages)."""
    return render(request, "accounts/coming.html", {"title": title})
